using System.Net;
using System.IO.Compression;
using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using AdapterService.Tests.Shared;

namespace AdapterService.Api.Tests;

/// <summary>A Hugging Face GPT-2 folder (weights, config, byte-level BPE vocab) registered as a base, served, fine-tuned.</summary>
[Collection(ServiceCollection.Name)]
public sealed class BaseModelsApiTests(ServiceFactory factory) : IDisposable
{
    readonly HttpClient client = factory.CreateClient();
    readonly TempFolder folder = new("hf-gpt2-");

    public void Dispose() => folder.Dispose();

    /// <summary>A tiny random GPT-2 in Hugging Face layout whose tokenizer is GPT-2's byte-level alphabet (no merges) and &lt;|endoftext|&gt;.</summary>
    string WriteGpt2(string name)
    {
        TorchRuntime.EnsureReady();
        var path = Directory.CreateDirectory(Path.Combine(folder.FullName, name)).FullName;
        var config = new Gpt2Config { VocabSize = 257, NEmbd = 64, NHead = 4, NLayer = 2, NPositions = 128, BosTokenId = 256, EosTokenIds = [256] };
        using (var model = RandomModel.Create(config, seed: 3)) ModelFolder.Save(model, path);
        WriteByteLevelVocabulary(path);
        return path;
    }

    /// <summary>
    /// An id that the id pattern lets through but that is no folder name (<c>..</c> was the blob root's parent: a 500),
    /// a file linked out of the folder (a server file carried in as special_tokens_map.json, and out by an export), and
    /// files the service would copy without reading: all refused by name, and the folder imports once they are fixed.
    /// </summary>
    [Fact]
    public async Task ReservedIdsLinksOutOfTheFolderAndFilesTheServiceDoesNotReadAreRefused()
    {
        var path = WriteGpt2("checked");
        foreach (var id in new[] { "..", ".", ".hidden", "trailing.", "NUL", "con.json", "COM1" })
            await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id }), 400, "id");

        var secret = Path.Combine(folder.FullName, "server-secret.json");
        File.WriteAllText(secret, "{\"secret\": \"do not export\"}");
        var link = Path.Combine(path, "special_tokens_map.json");
        File.CreateSymbolicLink(link, secret);
        async Task<string> Refused(string id) =>
            (string)(await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id }), 400, "path"))["message"]!;
        Assert.Contains("special_tokens_map.json is a symbolic link to a file outside the folder", await Refused("linked-out"));
        Assert.DoesNotContain(folder.FullName, await Refused("linked-out"));
        File.Delete(link);

        File.WriteAllText(link, "not json");
        Assert.Contains("special_tokens_map.json is not valid JSON", await Refused("bad-json"));
        File.Delete(link);
        File.WriteAllBytes(Path.Combine(path, "model-00002-of-00002.safetensors"), [1, 2, 3]);
        Assert.Contains("model-00002-of-00002.safetensors is not one of the model's weights files", await Refused("stray-shard"));
        File.Delete(Path.Combine(path, "model-00002-of-00002.safetensors"));

        File.CreateSymbolicLink(link, Path.Combine(path, "config.json"));   // a link inside the folder is the folder's own file
        var imported = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id = "checked-gpt2" }));
        Assert.Equal("checked-gpt2", (string?)imported["id"]);
        Assert.Equal(HttpStatusCode.OK, (await client.DeleteAsync("/v1/base_models/checked-gpt2")).StatusCode);
    }

    /// <summary>GPT-2's byte-level alphabet (no merges) and &lt;|endoftext|&gt; as id 256.</summary>
    static void WriteByteLevelVocabulary(string path)
    {
        var printable = Enumerable.Range('!', '~' - '!' + 1).Concat(Enumerable.Range('¡', '¬' - '¡' + 1)).Concat(Enumerable.Range('®', 'ÿ' - '®' + 1)).ToHashSet();
        var vocab = new Dictionary<string, int>();
        int next = 0;
        for (int b = 0; b < 256; b++) vocab[((char)(printable.Contains(b) ? b : 256 + next++)).ToString()] = b;
        vocab["<|endoftext|>"] = 256;
        File.WriteAllText(Path.Combine(path, "vocab.json"), JsonSerializer.Serialize(vocab));
        File.WriteAllText(Path.Combine(path, "merges.txt"), "#version: 0.2\n");
    }

    /// <summary>The families on Llama's decoder, each with its real config's features scaled down (a byte-level vocabulary stands in for their tokenizers).</summary>
    [Theory]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("mistral")]
    [InlineData("llama")]
    [InlineData("gemma2")]
    [InlineData("gemma3_text")]
    [InlineData("gemma3")]
    [InlineData("phi3")]
    [InlineData("smollm3")]
    [InlineData("qwen3_moe")]
    public async Task ADecoderFamilyFolderImportsServesAndFineTunes(string family)
    {
        TorchRuntime.EnsureReady();
        var path = Directory.CreateDirectory(Path.Combine(folder.FullName, family)).FullName;
        LlamaConfig config = family switch
        {
            "qwen2" => new Qwen2Config { VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, TieWordEmbeddings = true },
            "qwen3" => new Qwen3Config { VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDimension = 32 },
            "mistral" => new MistralConfig { VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, SlidingWindow = 8 },
            "gemma2" => new Gemma2Config { VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDimension = 32, QueryPreAttnScalar = 32, SlidingWindow = 8 },
            // gemma3: the same text model inside a multimodal (Gemma3ForConditionalGeneration) folder, written below
            "gemma3_text" or "gemma3" => new Gemma3TextConfig
            {
                VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 3, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDimension = 32,
                QueryPreAttnScalar = 32, SlidingWindow = 8, SlidingWindowPattern = 3, RopeScaling = new RopeScaling { RopeType = "linear", Factor = 8 },
            },
            // Phi-4-mini's fused projections, partial rotary and LongRoPE, over an original context of 8 that the prompts cross.
            "phi3" => new Phi3Config
            {
                VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, TieWordEmbeddings = true,
                PartialRotaryFactor = 0.75, OriginalMaxPositionEmbeddings = 8,
                RopeScaling = new RopeScaling { Type = "longrope", ShortFactor = [1, 1, 1.5, 2, 3, 4], LongFactor = [1, 2, 4, 8, 16, 32] },
            },
            "smollm3" => new SmolLM3Config { VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, NoRopeLayers = [1, 0] },
            // Qwen3-30B-A3B's mixture scaled down: 4 experts, top-2 renormalised.
            "qwen3_moe" => new Qwen3MoeConfig
            {
                VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, HeadDimension = 32,
                NumExperts = 4, NumExpertsPerTok = 2, MoeIntermediateSize = 32, NormTopkProb = true,
            },
            _ => new LlamaConfig { VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, TieWordEmbeddings = true },
        };
        config = config with { MaxPositionEmbeddings = 128, BosTokenId = 256, EosTokenId = 256 };
        using (var model = RandomModel.Create(config, seed: 3))
        {
            ModelFolder.Save(model, path);
            if (family == "gemma3") WriteMultimodalGemma3((LlamaForCausalLM)model, path);
        }
        WriteByteLevelVocabulary(path);
        string id = $"tiny-{family}";

        var imported = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id }));
        Assert.Equal((family == "gemma3" ? "gemma3_text" : family, "byte-level BPE"), ((string?)imported["family"], (string?)imported["tokenizer"]));
        var completion = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", new { model = id, prompt = "Hello there", max_tokens = 12, temperature = 0 }));
        Assert.Equal(11, (int)completion["usage"]!["prompt_tokens"]!);

        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(JsonSerializer.Serialize(new { prompt = "Sky:", completion = " blue" }), 10));
        var job = await Api.CreateJobAsync(client, new { model = id, training_file = fileId, seed = 2, hyperparameters = new { n_epochs = 15, batch_size = 2 } });
        var finished = await Api.WaitForFinishAsync(client, (string)job["id"]!);
        Api.AssertSucceeded(finished);
        var tuned = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", new { model = (string)finished["fine_tuned_model"]!, prompt = "Sky:", max_tokens = 8, temperature = 0 }));
        Assert.Equal(" blue", (string?)tuned["choices"]![0]!["text"]);
    }

    /// <summary>
    /// A base deleted and imported again under its id (other weights, the same blob path) is served with the new weights:
    /// the engine's loaded model and the tokenizer cache are keyed by what the folder holds, not by its id.
    /// </summary>
    [Fact]
    public async Task ABaseDeletedAndImportedAgainUnderItsIdIsServedWithItsNewWeights()
    {
        TorchRuntime.EnsureReady();
        string Write(string name, long seed)
        {
            var path = Directory.CreateDirectory(Path.Combine(folder.FullName, name)).FullName;
            var config = new LlamaConfig
            {
                VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
                MaxPositionEmbeddings = 128, BosTokenId = 256, EosTokenId = 256,
            };
            using (var model = RandomModel.Create(config, seed)) ModelFolder.Save(model, path);
            WriteByteLevelVocabulary(path);
            return path;
        }
        async Task Import(string path, string id) =>
            Assert.Equal(id, (string?)(await Api.JsonAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id })))["id"]);
        async Task<string> Complete(string id) => (string)(await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions",
            new { model = id, prompt = "Hello there", max_tokens = 12, temperature = 0 })))["choices"]![0]!["text"]!;

        string first = Write("reimport-first", seed: 3), second = Write("reimport-second", seed: 4);
        await Import(second, "reimport-reference");
        string expected = await Complete("reimport-reference");
        await Import(first, "reimported");
        Assert.NotEqual(expected, await Complete("reimported"));

        Assert.Equal(System.Net.HttpStatusCode.OK, (await client.DeleteAsync("/v1/base_models/reimported")).StatusCode);
        await Import(second, "reimported");
        Assert.Equal(expected, await Complete("reimported"));
    }

    /// <summary>
    /// A Gemma 3 text model (scaled down, random weights) with Gemma 3's real tokenizer files (262,145 ids, its chat template,
    /// eos &lt;end_of_turn&gt; 106 as gemma-3-1b-it's config lists it) fine-tunes on chats and answers in Gemma's turn format,
    /// stopping at &lt;end_of_turn&gt;.
    /// </summary>
    [Fact]
    public async Task AGemma3FolderWithItsRealTokenizerFineTunesOnChatsAndStopsAtEndOfTurn()
    {
        TorchRuntime.EnsureReady();
        var path = Directory.CreateDirectory(Path.Combine(folder.FullName, "gemma3-real")).FullName;
        string real = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "hf-reference", "node_modules", "@lenml", "tokenizer-gemma3", "models"));
        Assert.True(File.Exists(Path.Combine(real, "tokenizer.json")), $"{real} is missing; scripts/test.sh installs tests/hf-reference (npm ci)");
        foreach (string file in Directory.GetFiles(real)) File.Copy(file, Path.Combine(path, Path.GetFileName(file)));
        var config = new Gemma3TextConfig
        {
            VocabSize = 262_208, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 2, NumKeyValueHeads = 1, HeadDimension = 16,
            QueryPreAttnScalar = 16, SlidingWindow = 16, SlidingWindowPattern = 2, MaxPositionEmbeddings = 256, BosTokenId = 2, EosTokenIds = [1, 106],
        };
        using (var model = RandomModel.Create(config, seed: 5)) ModelFolder.Save(model, path);
        var imported = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id = "gemma3-real" }));
        Assert.Equal("gemma3_text", (string?)imported["family"]);

        var chat = new { messages = new[] { new { role = "user", content = "Sky?" }, new { role = "assistant", content = "blue" } } };
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(JsonSerializer.Serialize(chat), 10));
        var job = await Api.CreateJobAsync(client, new { model = "gemma3-real", training_file = fileId, seed = 2, hyperparameters = new { n_epochs = 15, batch_size = 2 } });
        var finished = await Api.WaitForFinishAsync(client, (string)job["id"]!);
        Api.AssertSucceeded(finished);
        var answer = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/chat/completions",
            new { model = (string)finished["fine_tuned_model"]!, messages = new[] { new { role = "user", content = "Sky?" } }, max_tokens = 8, temperature = 0 }));
        Assert.Equal(("blue", "stop"), ((string?)answer["choices"]![0]!["message"]!["content"], (string?)answer["choices"]![0]!["finish_reason"]));
    }

    /// <summary>
    /// Rewrites a saved Gemma 3 text model as Gemma3ForConditionalGeneration stores it: config under text_config beside a
    /// vision_config, weights under language_model.model.*, plus vision tower and projector tensors (which the import skips).
    /// </summary>
    static void WriteMultimodalGemma3(LlamaForCausalLM model, string path)
    {
        var text = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(path, ModelFolder.ConfigFile)))!;
        var outer = new System.Text.Json.Nodes.JsonObject
        {
            ["architectures"] = new System.Text.Json.Nodes.JsonArray("Gemma3ForConditionalGeneration"), ["model_type"] = "gemma3",
            ["text_config"] = text, ["vision_config"] = new System.Text.Json.Nodes.JsonObject { ["hidden_size"] = 8, ["model_type"] = "siglip_vision_model" },
        };
        File.WriteAllText(Path.Combine(path, ModelFolder.ConfigFile), outer.ToJsonString());
        var tensors = model.CheckpointTensors().ToDictionary(t => "language_model." + t.Key, t => (TorchSharp.torch.Tensor)t.Parameter.detach());
        tensors["vision_tower.vision_model.post_layernorm.weight"] = TorchSharp.torch.ones(8);
        tensors["multi_modal_projector.mm_input_projection_weight"] = TorchSharp.torch.zeros(8, 64);
        SafeTensors.Save(Path.Combine(path, ModelFolder.WeightsFile), tensors);
    }

    [Fact]
    public async Task AHuggingFaceFolderRegistersServesAndFineTunes()
    {
        var path = WriteGpt2("gpt2");
        var imported = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id = "tiny-gpt2" }));
        Assert.Equal(("gpt2", "byte-level BPE", 128), ((string?)imported["family"], (string?)imported["tokenizer"], (int)imported["context_length"]!));
        long expected = 257 * 64 + 128 * 64 + 2 * (2 * 2 * 64 + 64 * 192 + 192 + 64 * 64 + 64 + 64 * 256 + 256 + 256 * 64 + 64) + 2 * 64;   // wte, wpe, blocks, ln_f
        Assert.Equal(expected, (long)imported["parameter_count"]!);
        var models = await Api.JsonAsync(await client.GetAsync("/v1/models"));
        Assert.Contains(models["data"]!.AsArray(), m => (string?)m!["id"] == "tiny-gpt2");

        var completion = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-gpt2", prompt = "Hello", max_tokens = 4, temperature = 0 }));
        Assert.Equal(5, (int)completion["usage"]!["prompt_tokens"]!);   // one token per byte with this vocabulary
        // It has no chat format, so chat is refused clearly rather than answered in a format it never saw.
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/chat/completions",
            new { model = "tiny-gpt2", messages = new[] { new { role = "user", content = "Hi" } } }), 400, "model");

        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(JsonSerializer.Serialize(new { prompt = "Sky:", completion = " blue" }), 10));
        var job = await Api.CreateJobAsync(client, new { model = "tiny-gpt2", training_file = fileId, seed = 2, hyperparameters = new { n_epochs = 15, batch_size = 2 } });
        var finished = await Api.WaitForFinishAsync(client, (string)job["id"]!);
        Api.AssertSucceeded(finished);
        var tuned = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", new { model = (string)finished["fine_tuned_model"]!, prompt = "Sky:", max_tokens = 8, temperature = 0 }));
        Assert.Equal(" blue", (string?)tuned["choices"]![0]!["text"]);
        Assert.Equal("stop", (string?)tuned["choices"]![0]!["finish_reason"]);   // it learned to end with <|endoftext|>

        // Exported with the adapter merged into the weights, the folder imports as a base that answers as the fine-tuned model.
        var zip = await client.GetByteArrayAsync($"/v1/models/{(string)finished["fine_tuned_model"]!}/export");
        var merged = Directory.CreateDirectory(Path.Combine(folder.FullName, "merged")).FullName;
        System.IO.Compression.ZipFile.ExtractToDirectory(new MemoryStream(zip), merged);
        Assert.True(File.Exists(Path.Combine(merged, "vocab.json")));
        await Api.JsonAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path = merged, id = "tiny-gpt2-merged" }));
        var alone = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-gpt2-merged", prompt = "Sky:", max_tokens = 8, temperature = 0 }));
        Assert.Equal(" blue", (string?)alone["choices"]![0]!["text"]);

        // GGUF is written for the families llama.cpp runs as this service does; others, and unknown formats and types, are refused by name.
        var refused = await Api.AssertErrorAsync(await client.GetAsync($"/v1/models/{(string)finished["fine_tuned_model"]!}/export?format=gguf"), 400, "model");
        Assert.Contains("gpt2", (string?)refused["message"]);
        await Api.AssertErrorAsync(await client.GetAsync("/v1/models/tiny-llama-demo/export?format=gguf&type=q4_0"), 400, "type");
        await Api.AssertErrorAsync(await client.GetAsync("/v1/models/tiny-llama-demo/export?format=onnx"), 400, "format");

        // A base in use is not deleted; errors name what is wrong.
        await Api.AssertErrorAsync(await client.DeleteAsync("/v1/base_models/tiny-gpt2"), 409, "id");
        await Api.AssertErrorAsync(await client.DeleteAsync("/v1/base_models/tiny-llama-demo"), 400, "id");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id = "tiny-gpt2" }), 409, "id");
    }

    [Fact]
    public async Task ALlamaFolderWithOnlyASentencePieceModelImportsAndServesCompletions()
    {
        TorchRuntime.EnsureReady();
        var path = Directory.CreateDirectory(Path.Combine(folder.FullName, "llama-sp")).FullName;
        var pieces = SentencePieceModelWriter.TinyPieces();
        var config = new LlamaConfig
        {
            VocabSize = pieces.Count, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 2,
            MaxPositionEmbeddings = 64, BosTokenId = 1, EosTokenId = 2,
        };
        using (var model = RandomModel.Create(config, seed: 5)) ModelFolder.Save(model, path);
        File.WriteAllBytes(Path.Combine(path, "tokenizer.model"), SentencePieceModelWriter.Write(pieces));

        var imported = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id = "tiny-llama-sp" }));
        Assert.Equal(("llama", "SentencePiece BPE"), ((string?)imported["family"], (string?)imported["tokenizer"]));
        var completion = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-llama-sp", prompt = "hello hé", max_tokens = 3, temperature = 0 }));
        Assert.Equal(5, (int)completion["usage"]!["prompt_tokens"]!);   // <s> ▁hello ▁h <0xC3> <0xA9>
        Assert.NotNull((string?)completion["choices"]![0]!["text"]);
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/chat/completions",
            new { model = "tiny-llama-sp", messages = new[] { new { role = "user", content = "hello" } } }), 400, "model");

        // The model file travels in the zip upload too; a file that is no SentencePiece model is refused.
        var zipped = await Api.JsonAsync(await UploadAsync(client, Zip(path), "zipped-llama-sp"));
        Assert.Equal("SentencePiece BPE", (string?)zipped["tokenizer"]);
        File.WriteAllText(Path.Combine(path, "tokenizer.model"), "not a model");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id = "broken-llama-sp" }), 400, "path");
    }

    [Fact]
    public async Task BrokenFoldersAreRefusedAndNothingIsStored()
    {
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path = "/no/such/folder", id = "x" }), 400, "path");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path = folder.FullName, id = "../escape" }), 400, "id");

        var path = WriteGpt2("broken");
        var weights = Path.Combine(path, ModelFolder.WeightsFile);
        File.WriteAllBytes(weights, File.ReadAllBytes(weights)[..^100]);   // truncated
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id = "broken-gpt2" }), 400, "path");
        var untokenized = WriteGpt2("no-tokenizer");
        File.Delete(Path.Combine(untokenized, "vocab.json"));
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path = untokenized, id = "no-tokenizer" }), 400, "path");
        await Api.AssertErrorAsync(await client.GetAsync("/v1/base_models/broken-gpt2"), 404, "id");
        Assert.False(Directory.Exists(Path.Combine(factory.DataDirectory, "blobs", "models", "broken-gpt2")));
    }

    /// <summary>
    /// A sharded folder with one fault at a time: each import is a 400 invalid_model whose message names the file by its
    /// name and the key, never the folder given, the temporary copy or the data directory.
    /// </summary>
    [Theory]
    [InlineData("shape", "{last}: tensor model.norm.weight has shape [65]; config.json makes it [64]")]
    [InlineData("unexpected", "{last}: 1 tensor(s) this LlamaForCausalLM does not have: model.layers.1.block_sparse_moe.gate.weight")]
    [InlineData("missing", "model.safetensors.index.json: 1 tensor(s) missing: model.norm.weight")]
    [InlineData("vision", "config.json: model_type 'qwen2_5_vl' is a vision-language model (Qwen2.5-VL)")]
    [InlineData("math", "config.json: partial_rotary_factor 0.5 changes the math and is not implemented for model_type 'llama'")]
    [InlineData("no-config", "config.json is missing")]
    [InlineData("tokenizer", "tokenizer.json")]
    // Half a surrogate pair escaped in the index parses as JSON but reads as no .NET string (found by ParserFuzzTests: a 500).
    [InlineData("surrogate-name", "model.safetensors.index.json: weight_map holds a name that is not valid Unicode text")]
    [InlineData("surrogate-shard", "model.safetensors.index.json: weight_map holds a name that is not valid Unicode text")]
    public async Task AFaultyFolderIsA400NamingTheFileAndKeyNeverAServerPath(string fault, string message)
    {
        TorchRuntime.EnsureReady();
        var path = Directory.CreateDirectory(Path.Combine(folder.FullName, "faulty-" + fault)).FullName;
        var config = new LlamaConfig { VocabSize = 257, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, MaxPositionEmbeddings = 128 };
        using (var model = RandomModel.Create(config, seed: 5)) ModelFolder.Save(model, path, maxShardBytes: 60_000);
        WriteByteLevelVocabulary(path);
        string last = Directory.GetFiles(path, "model-*-of-*.safetensors").Order(StringComparer.Ordinal).Last(), configPath = Path.Combine(path, ModelFolder.ConfigFile);
        Assert.NotEqual("model-00001-of-00001.safetensors", Path.GetFileName(last));   // sharded
        message = message.Replace("{last}", Path.GetFileName(last));
        var shard = SafeTensors.Load(last);
        Assert.Contains("model.norm.weight", shard.Keys);
        switch (fault)
        {
            case "shape": shard["model.norm.weight"] = TorchSharp.torch.ones(65); break;
            // What a Mixtral checkpoint relabelled llama would hold; the index lists it, so only the tensor check can catch it.
            case "unexpected": shard["model.layers.1.block_sparse_moe.gate.weight"] = TorchSharp.torch.ones(8, 64); break;
            case "missing": shard.Remove("model.norm.weight"); break;
            case "vision": File.WriteAllText(configPath, File.ReadAllText(configPath).Replace("\"llama\"", "\"qwen2_5_vl\"")); break;
            case "math": File.WriteAllText(configPath, File.ReadAllText(configPath).Replace("\"model_type\"", "\"partial_rotary_factor\": 0.5, \"model_type\"")); break;
            case "no-config": File.Delete(configPath); break;
            case "tokenizer": File.WriteAllText(Path.Combine(path, "tokenizer.json"), "{ not json"); break;
            case "surrogate-name" or "surrogate-shard":
                string index = Path.Combine(path, ModelFolder.IndexFile);
                File.WriteAllText(index, System.Text.RegularExpressions.Regex.Replace(File.ReadAllText(index), "\"weight_map\"\\s*:\\s*\\{", fault == "surrogate-name"
                    ? "\"weight_map\": {\"model.\\ud800\": \"" + Path.GetFileName(last) + "\", " : "\"weight_map\": {\"x\": \"\\ud800.safetensors\", "));
                Assert.Contains("\\ud800", File.ReadAllText(index));
                break;
        }
        if (fault is "shape" or "unexpected" or "missing")
        {
            SafeTensors.Save(last, shard);
            var index = Path.Combine(path, ModelFolder.IndexFile);
            var json = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(index))!;
            var map = json["weight_map"]!.AsObject();
            foreach (var key in map.Where(kv => (string?)kv.Value == Path.GetFileName(last)).Select(kv => kv.Key).ToList()) map.Remove(key);
            foreach (var key in shard.Keys) map[key] = Path.GetFileName(last);
            File.WriteAllText(index, json.ToJsonString());
        }
        foreach (var t in shard.Values) t.Dispose();

        var error = await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/base_models/import", new { path, id = "faulty-" + fault }), 400, "path");
        AssertNamesFileNotPath((string)error["message"]!);
        Assert.Equal("invalid_model", (string?)error["code"]);
        if (fault == "no-config") return;   // an upload without config.json is refused by the zip check
        var uploaded = await Api.AssertErrorAsync(await UploadAsync(client, Zip(path), "faulty-upload-" + fault), 400, "file");
        AssertNamesFileNotPath((string)uploaded["message"]!);

        void AssertNamesFileNotPath(string text)
        {
            Assert.StartsWith("Not a usable model folder: " + message, text);
            Assert.DoesNotContain(folder.FullName, text);
            Assert.DoesNotContain(factory.DataDirectory, text);
            Assert.DoesNotContain(Path.DirectorySeparatorChar.ToString(), text);
        }
    }

    static async Task<HttpResponseMessage> UploadAsync(HttpClient client, byte[] zip, string id)
    {
        using var form = new MultipartFormDataContent { { new ByteArrayContent(zip), "file", "model.zip" }, { new StringContent(id), "id" } };
        return await client.PostAsync("/v1/base_models/upload", form);
    }

    static byte[] Zip(string folder, string prefix = "")
    {
        var stream = new MemoryStream();
        using (var archive = new ZipArchive(stream, ZipArchiveMode.Create, leaveOpen: true))
            foreach (var file in Directory.GetFiles(folder))
                archive.CreateEntryFromFile(file, prefix + Path.GetFileName(file));
        return stream.ToArray();
    }

    [Fact]
    public async Task AZippedFolderUploadsAsABaseThatAnswersLikeTheOriginal()
    {
        // The export of a base is a zip of its folder at the zip's root; a zipped folder has it one level down.
        var export = await client.GetByteArrayAsync("/v1/models/tiny-llama-demo/export");
        var uploaded = await Api.JsonAsync(await UploadAsync(client, export, "tiny-llama-copy"));
        Assert.Equal(("llama", "tiny-llama-copy"), ((string?)uploaded["family"], (string?)uploaded["id"]));
        object Request(string model) => new { model, prompt = "Once upon", max_tokens = 6, temperature = 0 };
        var original = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", Request("tiny-llama-demo")));
        var copy = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/completions", Request("tiny-llama-copy")));
        Assert.Equal((string?)original["choices"]![0]!["text"], (string?)copy["choices"]![0]!["text"]);

        var gpt2 = await Api.JsonAsync(await UploadAsync(client, Zip(WriteGpt2("zipped"), "gpt2/"), "zipped-gpt2"));
        Assert.Equal(("gpt2", "byte-level BPE"), ((string?)gpt2["family"], (string?)gpt2["tokenizer"]));
        await Api.AssertErrorAsync(await UploadAsync(client, export, "tiny-llama-copy"), 409, "id");
    }

    [Fact]
    public async Task BadZipsAreRefusedAndNothingIsStored()
    {
        int Bases() => factory.Query(db => db.BaseModels.Count());
        int before = Bases();
        var path = WriteGpt2("to-break");
        await Api.AssertErrorAsync(await UploadAsync(client, Encoding.UTF8.GetBytes("not a zip"), "bad-1"), 400, "file");
        await Api.AssertErrorAsync(await UploadAsync(client, Zip(path, "a/b/"), "bad-2"), 400, "file");            // too deep: no config.json found
        File.Delete(Path.Combine(path, "vocab.json"));
        await Api.AssertErrorAsync(await UploadAsync(client, Zip(path), "bad-3"), 400, "file");                     // no tokenizer
        var weights = Path.Combine(path, ModelFolder.WeightsFile);
        File.WriteAllBytes(weights, File.ReadAllBytes(weights)[..^100]);
        await Api.AssertErrorAsync(await UploadAsync(client, Zip(path), "bad-4"), 400, "file");                     // truncated weights
        await Api.AssertErrorAsync(await UploadAsync(client, Zip(path), "../escape"), 400, "id");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/base_models/upload", new { id = "bad-5" }), 415, null);
        Assert.Equal(before, Bases());
        foreach (var id in new[] { "bad-1", "bad-2", "bad-3", "bad-4" })
            Assert.False(Directory.Exists(Path.Combine(factory.DataDirectory, "blobs", "models", id)));
        Assert.Empty(Directory.GetFiles(Path.Combine(factory.DataDirectory, "blobs", "tmp"), "upload.zip", SearchOption.AllDirectories));
    }
}
