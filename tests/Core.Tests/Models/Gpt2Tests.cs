using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using AdapterService.Core.Training;
using static AdapterService.Core.Tests.Models.HfReference;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

/// <summary>GPT-2 loaded from a folder in Hugging Face's layout, against the GPT-2 equations written out here in float64.</summary>
public sealed class Gpt2Tests : IDisposable
{
    const int Vocab = 264, Embd = 32, Heads = 4, Layers = 2, Positions = 24, Inner = 4 * Embd;
    const double Eps = 1e-5, Tolerance = 1e-4;

    readonly DirectoryInfo root = Directory.CreateTempSubdirectory("gpt2-tests-");
    readonly string folder;
    readonly Dictionary<string, Tensor> hf;   // the checkpoint as Hugging Face stores it (Conv1D weights [in, out])

    /// <summary>config.json as transformers writes it for GPT2LMHeadModel (dropouts, summary keys and all).</summary>
    static string ConfigJson(string activation = "gelu_new", string extra = "") => $$"""
        {
          "activation_function": "{{activation}}",
          "architectures": ["GPT2LMHeadModel"],
          "attn_pdrop": 0.1,
          "bos_token_id": 256,
          "embd_pdrop": 0.1,
          "eos_token_id": 256,
          "initializer_range": 0.02,
          "layer_norm_epsilon": 1e-05,
          "model_type": "gpt2",
          "n_ctx": {{Positions}},
          "n_embd": {{Embd}},
          "n_head": {{Heads}},
          "n_inner": null,
          "n_layer": {{Layers}},
          "n_positions": {{Positions}},
          "reorder_and_upcast_attn": false,
          "resid_pdrop": 0.1,
          "scale_attn_by_inverse_layer_idx": false,
          "scale_attn_weights": true,
          "summary_activation": null,
          "summary_first_dropout": 0.1,
          "summary_proj_to_labels": true,
          "summary_type": "cls_index",
          "summary_use_proj": true,{{extra}}
          "torch_dtype": "float32",
          "transformers_version": "4.46.0",
          "use_cache": true,
          "vocab_size": {{Vocab}}
        }
        """;

    /// <summary>The tensors of a GPT2LMHeadModel checkpoint: lm_head is tied to wte, so it is not stored.</summary>
    static IEnumerable<(string, long[])> HfShapes()
    {
        yield return ("transformer.wte.weight", [Vocab, Embd]);
        yield return ("transformer.wpe.weight", [Positions, Embd]);
        for (int i = 0; i < Layers; i++)
        {
            string h = $"transformer.h.{i}.";
            yield return (h + "ln_1.weight", [Embd]);
            yield return (h + "ln_1.bias", [Embd]);
            yield return (h + "attn.c_attn.weight", [Embd, 3 * Embd]);
            yield return (h + "attn.c_attn.bias", [3 * Embd]);
            yield return (h + "attn.c_proj.weight", [Embd, Embd]);
            yield return (h + "attn.c_proj.bias", [Embd]);
            yield return (h + "ln_2.weight", [Embd]);
            yield return (h + "ln_2.bias", [Embd]);
            yield return (h + "mlp.c_fc.weight", [Embd, Inner]);
            yield return (h + "mlp.c_fc.bias", [Inner]);
            yield return (h + "mlp.c_proj.weight", [Inner, Embd]);
            yield return (h + "mlp.c_proj.bias", [Embd]);
        }
        yield return ("transformer.ln_f.weight", [Embd]);
        yield return ("transformer.ln_f.bias", [Embd]);
    }

    public Gpt2Tests()
    {
        TorchRuntime.EnsureReady();
        folder = Path.Combine(root.FullName, "gpt2");
        hf = Random(HfShapes(), seed: 7);
        foreach (var t in hf.Values) t.DetachFromDisposeScope();
        WriteFolder(folder, ConfigJson(), hf);
    }

    public void Dispose()
    {
        foreach (var t in hf.Values) t.Dispose();
        root.Delete(recursive: true);
    }

    /// <summary>GPT-2's forward pass for one sequence, from the checkpoint tensors (Conv1D: x·W + b).</summary>
    static Tensor Reference(IReadOnlyDictionary<string, Tensor> w, long[] ids)
    {
        Tensor W(string key) => F64(w[key]);
        var h = W("transformer.wte.weight").index_select(0, tensor(ids)) + W("transformer.wpe.weight").narrow(0, 0, ids.Length);   // [t, E]
        for (int i = 0; i < Layers; i++)
        {
            string p = $"transformer.h.{i}.";
            var a = LayerNorm(h, W(p + "ln_1.weight"), W(p + "ln_1.bias"), Eps);
            var qkv = a.matmul(W(p + "attn.c_attn.weight")) + W(p + "attn.c_attn.bias");                                        // [t, 3E]
            var attended = Attention(qkv.narrow(1, 0, Embd), qkv.narrow(1, Embd, Embd), qkv.narrow(1, 2 * Embd, Embd), Heads, causal: true);
            h = h + attended.matmul(W(p + "attn.c_proj.weight")) + W(p + "attn.c_proj.bias");
            var m = LayerNorm(h, W(p + "ln_2.weight"), W(p + "ln_2.bias"), Eps);
            h = h + GeluTanh(m.matmul(W(p + "mlp.c_fc.weight")) + W(p + "mlp.c_fc.bias")).matmul(W(p + "mlp.c_proj.weight")) + W(p + "mlp.c_proj.bias");
        }
        h = LayerNorm(h, W("transformer.ln_f.weight"), W("transformer.ln_f.bias"), Eps);
        return h.matmul(W("transformer.wte.weight").t());                                                                      // [t, vocab]
    }

    static long[] Tokens(int length, long seed) => Ids(1, length, seed)[0].data<long>().ToArray();

    [Fact]
    public void AFolderInHuggingFaceLayoutGivesTheLogitsOfTheGpt2Equations()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<GPT2LMHeadModel>(folder);
        using var _ = no_grad();
        foreach (int length in new[] { 1, 7, Positions })
        {
            var ids = Tokens(length, seed: length);
            AssertClose(Reference(hf, ids), model.forward(tensor(ids, [1, length]))[0], Tolerance);
        }
        Assert.Equal(Vocab, model.VocabSize);
        Assert.Equal(Positions, model.ContextLength);
        Assert.Equal(256, model.EosTokenId);
        Assert.Equal((Layers, Heads, Embd / Heads), (model.NumLayers, model.KeyValueHeads, model.HeadDim));
    }

    [Fact]
    public void TheOutputHeadIsTheTokenEmbedding()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<GPT2LMHeadModel>(folder);
        using var _ = no_grad();
        model.transformer.wte.weight![3, 5] = tensor(42f);
        Assert.Equal(42f, model.lm_head.weight[3, 5].item<float>());
        Assert.Equal(hf.Values.Sum(t => t.numel()), model.CheckpointTensors().Sum(t => t.Parameter.numel()));   // stored once
    }

    [Fact]
    public void CachedDecodingGivesTheLogitsOfTheFullForward()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<GPT2LMHeadModel>(folder);
        using var _ = no_grad();
        var ids = tensor(Tokens(12, seed: 3), [1, 12]);
        var full = model.forward(ids);                                                     // [1, 12, vocab]
        using var cache = new KvCache(model.NumLayers);
        var steps = new List<Tensor> { model.Forward(ids.narrow(1, 0, 5), cache) };        // a prompt, then one token at a time
        for (int i = 5; i < 12; i++) steps.Add(model.Forward(ids.narrow(1, i, 1), cache));
        AssertClose(full, cat(steps, 1), 1e-5);
    }

    [Fact]
    public void SavingWritesWhatHuggingFaceWroteKeysLayoutsAndValues()
    {
        using var scope = NewDisposeScope();
        using (var model = ModelFolder.Load(folder)) ModelFolder.Save(model, Path.Combine(root.FullName, "saved"));

        var saved = SafeTensors.Load(Path.Combine(root.FullName, "saved", ModelFolder.WeightsFile));
        Assert.Equal(hf.Keys.Order(), saved.Keys.Order());
        foreach (var (key, t) in hf) Assert.Equal(Bytes(t), Bytes(saved[key]));
        var config = (Gpt2Config)ModelConfig.Load(Path.Combine(root.FullName, "saved", ModelFolder.ConfigFile));
        Assert.Equal((Vocab, Embd, Heads, Layers, Positions, "gelu_new"), (config.VocabSize, config.NEmbd, config.NHead, config.NLayer, config.NPositions, config.ActivationFunction));
        Assert.Equal(["GPT2LMHeadModel"], config.Architectures!);
    }

    [Fact]
    public void AGpt2ModelCheckpointWithoutPrefixAndWithMaskBuffersLoads()
    {
        using var scope = NewDisposeScope();
        // The original gpt2 upload: GPT2Model keys (no "transformer."), plus the causal-mask buffers of old transformers.
        var legacy = hf.ToDictionary(kv => kv.Key["transformer.".Length..], kv => kv.Value);
        for (int i = 0; i < Layers; i++)
        {
            legacy[$"h.{i}.attn.bias"] = ones(1, 1, Positions, Positions).tril();
            legacy[$"h.{i}.attn.masked_bias"] = tensor(-1e4f);
        }
        string legacyFolder = Path.Combine(root.FullName, "legacy");
        WriteFolder(legacyFolder, ConfigJson(), legacy);

        using var model = ModelFolder.Load<CausalLanguageModel>(legacyFolder);
        using var _ = no_grad();
        var ids = Tokens(6, seed: 11);
        AssertClose(Reference(hf, ids), model.forward(tensor(ids, [1, 6]))[0], Tolerance);
    }

    [Fact]
    public async Task TheInferenceEngineServesItAsTheUncachedModelGreedilyDecodes()
    {
        var prompt = Tokens(4, seed: 5).Select(i => (int)i).ToList();
        var produced = new List<int>();
        using (var scope = NewDisposeScope())
        using (var model = ModelFolder.Load<GPT2LMHeadModel>(folder))
        using (no_grad())
        {
            var ids = prompt.Select(i => (long)i).ToList();
            for (int i = 0; i < 10; i++)
            {
                int next = (int)model.forward(tensor(ids.ToArray(), [1, ids.Count]))[0, -1].argmax().item<long>();
                if (next == ByteTokenizer.End) break;
                produced.Add(next);
                ids.Add(next);
            }
        }

        using var engine = new InferenceEngine();
        string text = "";
        await foreach (var chunk in engine.Generate(new GenerationRequest("gpt2", folder, null, null, prompt, new SamplingOptions(10, Temperature: 0))))
            text += chunk.Text;
        Assert.Equal(System.Text.Encoding.UTF8.GetString(produced.Where(ByteTokenizer.IsByte).Select(t => (byte)t).ToArray()), text);
    }

    [Fact]
    public void LoraAttachesToCAttnAndChangesTheOutput()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<GPT2LMHeadModel>(folder);
        using var _ = no_grad();
        var ids = tensor(Tokens(5, seed: 8), [1, 5]);
        var before = model.forward(ids);
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["c_attn"] }, seed: 1);

        Assert.Equal(Enumerable.Range(0, Layers).Select(i => $"transformer.h.{i}.attn.c_attn"), adapter.Layers.Keys.Order());
        Assert.Equal(Layers * 4 * (Embd + 3 * Embd), adapter.ParameterCount);
        adapter.Attach(model);
        AssertClose(before, model.forward(ids), 1e-6);   // B starts at zero
        Randomize(adapter, 2);
        Assert.True((model.forward(ids) - before).abs().max().item<float>() > 1e-2);
        Assert.Equal(new Gpt2Config { VocabSize = Vocab, NEmbd = Embd, NHead = Heads, NLayer = Layers, NPositions = Positions }.LinearPaths().Order(),
            model.LinearLayers().Select(l => l.Path).Order());
        Assert.Equal(new Gpt2Config { VocabSize = Vocab, NEmbd = Embd, NHead = Heads, NLayer = Layers, NPositions = Positions }.NormShapes().Order(),
            model.NormLayers().Select(n => (n.Path, n.Layer.Size)).Order());
    }

    [Fact]
    public void TheTrainerFitsALoraOnItAndLeavesTheBaseAlone()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<GPT2LMHeadModel>(folder);
        var examples = Enumerable.Range(0, 8).Select(i =>
        {
            var (ids, train) = ModelText.BuiltIn.EncodeExample(new CompletionExample(i, $"q{i}:", "ok!"), null)[0];
            return new TokenizedExample([.. ids], [.. train]);
        }).ToList();
        var baseBefore = model.named_parameters().ToDictionary(p => p.name, p => Bytes(p.parameter));
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["c_attn", "c_fc"] }, seed: 5);
        var losses = new List<double>();

        using (var trainer = new LanguageModelTrainer(model, adapter, examples, new Hyperparameters(Epochs: 8, BatchSize: 4, LearningRate: 0.03), ByteTokenizer.End, seed: 6))
            trainer.Run(p => losses.Add(p.TrainLoss), CancellationToken.None);

        Assert.True(losses[^2..].Average() < losses[0] / 4, $"loss {losses[0]:F3} at the first step, {losses[^1]:F3} at the last");
        foreach (var (name, p) in model.named_parameters())
            Assert.True(baseBefore[name].AsSpan().SequenceEqual(Bytes(p)), $"base parameter {name} changed");
    }

    [Fact]
    public void ItsLayerNormsAreListedAndAdaptable()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<GPT2LMHeadModel>(folder);
        Assert.Equal([.. Enumerable.Range(0, Layers).SelectMany(i => new[] { $"transformer.h.{i}.ln_1", $"transformer.h.{i}.ln_2" }), "transformer.ln_f"],
            model.NormLayers().Select(n => n.Path).Order());
        Assert.All(model.NormLayers(), n => Assert.NotNull(n.Layer.Bias));
    }

    [Theory]
    [InlineData("\"model_type\": \"gpt2\"", "\"model_type\": \"bloom\"", "model_type 'bloom' is not supported")]
    [InlineData("\"n_embd\": 32,", "", "n_embd")]
    [InlineData("\"n_head\": 4,", "\"n_head\": 5,", "n_head (5) does not divide n_embd (32)")]
    [InlineData("\"GPT2LMHeadModel\"", "\"GPT2DoubleHeadsModel\"", "architectures [GPT2DoubleHeadsModel]")]
    [InlineData("\"activation_function\": \"gelu_new\"", "\"activation_function\": \"mish\"", "activation_function 'mish'")]
    [InlineData("\"n_positions\": 24,", "\"n_positions\": 25,", "transformer.wpe.weight has shape [24,32]; config.json makes it [25,32]")]
    [InlineData("\"n_positions\": 24,", "\"n_positions\": 24, \"rotary_dim\": 8,", "config.json: rotary_dim 8 changes the math and is not implemented for model_type 'gpt2'")]
    [InlineData("\"n_positions\": 24,", "\"n_positions\": 24, \"multi_query\": true,", "multi_query true changes the math")]
    [InlineData("\"n_positions\": 24,", "\"n_positions\": 24, \"n_experts\": 4, \"num_experts\": 4,", "num_experts 4 changes the math")]
    public void BadConfigsAreRefusedNamingTheKey(string find, string replace, string message)
    {
        File.WriteAllText(Path.Combine(folder, ModelFolder.ConfigFile), ConfigJson().Replace(find, replace));
        var e = Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder));
        Assert.Contains(message, e.Message);
    }

    /// <summary>
    /// n_positions sizes no linear layer, so only building the model meets it: 2e9 positions × 32 is 256 GB of position
    /// embeddings, refused as a config error rather than an allocation failure (a 500).
    /// </summary>
    [Fact]
    public void ASizeTooLargeToBuildIsAConfigError()
    {
        // Under vm.overcommit_memory 1 the allocation would succeed and initialising it would exhaust memory, so the
        // check needs Linux's default heuristic (0) or strict (2) accounting, which refuse 256 GB at once.
        const string overcommit = "/proc/sys/vm/overcommit_memory";
        if (File.Exists(overcommit) && File.ReadAllText(overcommit).Trim() == "1") return;
        File.WriteAllText(Path.Combine(folder, ModelFolder.ConfigFile), ConfigJson().Replace($"\"n_positions\": {Positions},", "\"n_positions\": 2000000000,"));
        var e = Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder));
        Assert.StartsWith("config.json: ", e.Message);
        Assert.Contains("too large", e.Message);
    }

    [Fact]
    public void MissingAndUnexpectedTensorsAreNamed()
    {
        using var scope = NewDisposeScope();
        var partial = hf.Where(kv => kv.Key != "transformer.h.1.mlp.c_fc.bias").ToDictionary();
        WriteFolder(folder, ConfigJson(), partial);
        Assert.Contains("missing: transformer.h.1.mlp.c_fc.bias", Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder)).Message);

        partial["transformer.h.1.mlp.c_fc.bias"] = hf["transformer.h.1.mlp.c_fc.bias"];
        partial["transformer.h.1.crossattention.c_attn.weight"] = zeros(Embd, 2 * Embd);
        WriteFolder(folder, ConfigJson(), partial);
        Assert.Contains("does not have: transformer.h.1.crossattention.c_attn.weight", Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder)).Message);
    }

    [Fact]
    public void LoadingAGpt2FolderAsAnotherKindOfModelIsRefused()
    {
        var e = Assert.Throws<InvalidDataException>(() => ModelFolder.Load<ViTForImageClassification>(folder));
        Assert.Contains("holds a gpt2 model (GPT2LMHeadModel), not a ViTForImageClassification", e.Message);
    }
}
