using System.Text.Json.Nodes;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using static AdapterService.Core.Tests.Models.HfReference;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

/// <summary>A Llama folder as transformers writes it (bfloat16, tied head, sharded with an index), and what a bad index does.</summary>
public sealed class CheckpointTests : IDisposable
{
    readonly DirectoryInfo root = Directory.CreateTempSubdirectory("checkpoint-tests-");
    readonly string folder;
    readonly Dictionary<string, Tensor> hf;
    const string Shard1 = "model-00001-of-00002.safetensors", Shard2 = "model-00002-of-00002.safetensors";

    /// <summary>TinyLlama's shape, with a tied head, as LlamaConfig.to_json_string writes it.</summary>
    static readonly string ConfigJson = $$"""
        {
          "architectures": ["LlamaForCausalLM"],
          "attention_bias": false,
          "attention_dropout": 0.0,
          "bos_token_id": 260,
          "eos_token_id": 256,
          "head_dim": {{Config.HeadDim}},
          "hidden_act": "silu",
          "hidden_size": {{Config.HiddenSize}},
          "initializer_range": 0.02,
          "intermediate_size": {{Config.IntermediateSize}},
          "max_position_embeddings": {{Config.MaxPositionEmbeddings}},
          "mlp_bias": false,
          "model_type": "llama",
          "num_attention_heads": {{Config.NumAttentionHeads}},
          "num_hidden_layers": {{Config.NumHiddenLayers}},
          "num_key_value_heads": {{Config.KeyValueHeads}},
          "pretraining_tp": 1,
          "rms_norm_eps": {{Config.RmsNormEps}},
          "rope_scaling": null,
          "rope_theta": {{Config.RopeTheta}},
          "tie_word_embeddings": true,
          "torch_dtype": "bfloat16",
          "transformers_version": "4.46.0",
          "use_cache": true,
          "vocab_size": {{Config.VocabSize}}
        }
        """;

    static IEnumerable<(string, long[])> HfShapes()
    {
        long hidden = Config.HiddenSize, kv = Config.KeyValueHeads * Config.HeadDim, ffn = Config.IntermediateSize;
        yield return ("model.embed_tokens.weight", [Config.VocabSize, hidden]);
        for (int i = 0; i < Config.NumHiddenLayers; i++)
        {
            string l = $"model.layers.{i}.";
            yield return (l + "input_layernorm.weight", [hidden]);
            yield return (l + "self_attn.q_proj.weight", [hidden, hidden]);
            yield return (l + "self_attn.k_proj.weight", [kv, hidden]);
            yield return (l + "self_attn.v_proj.weight", [kv, hidden]);
            yield return (l + "self_attn.o_proj.weight", [hidden, hidden]);
            yield return (l + "post_attention_layernorm.weight", [hidden]);
            yield return (l + "mlp.gate_proj.weight", [ffn, hidden]);
            yield return (l + "mlp.up_proj.weight", [ffn, hidden]);
            yield return (l + "mlp.down_proj.weight", [hidden, ffn]);
        }
        yield return ("model.norm.weight", [hidden]);
    }

    public CheckpointTests()
    {
        TorchRuntime.EnsureReady();
        folder = Path.Combine(root.FullName, "llama");
        hf = Random(HfShapes(), seed: 12).ToDictionary(kv => kv.Key, kv => kv.Value.to_type(ScalarType.BFloat16));
        // Sharded as save_pretrained shards: layer 0 and the embedding in the first file, the rest in the second.
        var first = hf.Where(kv => kv.Key.StartsWith("model.layers.0.") || kv.Key.StartsWith("model.embed")).ToDictionary();
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, ModelFolder.ConfigFile), ConfigJson);
        SafeTensors.Save(Path.Combine(folder, Shard1), first, new Dictionary<string, string> { ["format"] = "pt" });
        SafeTensors.Save(Path.Combine(folder, Shard2), hf.Where(kv => !first.ContainsKey(kv.Key)).ToDictionary(), new Dictionary<string, string> { ["format"] = "pt" });
        WriteIndex(Index(hf.Keys.ToDictionary(k => k, k => first.ContainsKey(k) ? Shard1 : Shard2)));
    }

    public void Dispose()
    {
        foreach (var t in hf.Values) t.Dispose();
        root.Delete(recursive: true);
    }

    static JsonObject Index(Dictionary<string, string> weightMap) => new()
    {
        ["metadata"] = new JsonObject { ["total_size"] = 12345 },
        ["weight_map"] = new JsonObject(weightMap.OrderBy(kv => kv.Key).Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
    };

    void WriteIndex(JsonNode index) => File.WriteAllText(Path.Combine(folder, ModelFolder.IndexFile), index.ToJsonString());

    [Fact]
    public void AShardedBfloat16FolderWithATiedHeadLoadsAndGenerates()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<LlamaForCausalLM>(folder);

        Assert.DoesNotContain("lm_head.weight", model.CheckpointTensors().Select(t => t.Key));   // tied: stored once, as the embedding
        foreach (var (name, p) in model.named_parameters().Where(p => p.name != "lm_head.weight"))
            Assert.Equal(Bytes(hf[name].to_type(ScalarType.Float32)), Bytes(p));
        Assert.Equal(Bytes(model.model.embed_tokens.weight!), Bytes(model.lm_head.weight));
        Assert.Equal((260, 256), (model.BosTokenId, model.EosTokenId));
        using var _ = no_grad();
        var ids = Ids(1, 6, seed: 13);
        AssertClose(LlamaTests.Reference.Model(ids, model), model.forward(ids), 1e-4);

        // Greedy generation with the cache picks what the full forward picks at every step.
        using var cache = new KvCache(model.NumLayers);
        var logits = model.Forward(ids, cache);
        var sequence = ids.data<long>().ToList();
        for (int i = 0; i < 8; i++)
        {
            long next = logits[0, -1].argmax().item<long>();
            Assert.Equal(model.forward(tensor(sequence.ToArray(), [1, sequence.Count]))[0, -1].argmax().item<long>(), next);
            sequence.Add(next);
            logits = model.Forward(tensor(new[] { next }, [1, 1]), cache);
        }
    }

    [Fact]
    public void SavingInShardsWritesAnIndexThatLoadsBack()
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load<LlamaForCausalLM>(folder);
        string saved = Path.Combine(root.FullName, "saved");
        ModelFolder.Save(model, saved, maxShardBytes: 40_000);

        var index = JsonNode.Parse(File.ReadAllText(Path.Combine(saved, ModelFolder.IndexFile)))!;
        var shards = index["weight_map"]!.AsObject().Select(kv => kv.Value!.GetValue<string>()).Distinct().Order().ToList();
        Assert.True(shards.Count > 2, $"{shards.Count} shards");
        Assert.Equal(Enumerable.Range(1, shards.Count).Select(i => $"model-{i:D5}-of-{shards.Count:D5}.safetensors"), shards);
        Assert.Equal(hf.Keys.Order(), index["weight_map"]!.AsObject().Select(kv => kv.Key).Order());   // tied head not stored
        Assert.False(File.Exists(Path.Combine(saved, ModelFolder.WeightsFile)));

        using var loaded = ModelFolder.Load<LlamaForCausalLM>(saved);
        var ids = Ids(1, 5, seed: 14);
        using var _ = no_grad();
        Assert.Equal(Bytes(model.forward(ids)), Bytes(loaded.forward(ids)));

        ModelFolder.Save(model, saved);   // saved again whole: the shards and their index go
        Assert.Equal([ModelFolder.ConfigFile, ModelFolder.WeightsFile], Directory.GetFiles(saved).Select(Path.GetFileName).Order());
    }

    public static TheoryData<string, string> BadIndexes => new()
    {
        { "{ not json", "model.safetensors.index.json: not valid JSON" },
        { """{"metadata": {}}""", "weight_map is missing or not a JSON object" },
        { """{"weight_map": []}""", "weight_map is missing or not a JSON object" },
        { """{"weight_map": {}}""", "weight_map is empty" },
        { """{"weight_map": {"model.norm.weight": 2}}""", "weight_map entry for model.norm.weight is not a file name string" },
        { """{"weight_map": {"model.norm.weight": "../model-00002-of-00002.safetensors"}}""", "weight_map puts model.norm.weight in '../model-00002-of-00002.safetensors', which is not a .safetensors file name in the folder" },
        { """{"weight_map": {"model.norm.weight": "config.json"}}""", "which is not a .safetensors file name" },
    };

    [Theory]
    [MemberData(nameof(BadIndexes))]
    public void AMalformedIndexIsRefusedSayingWhatIsWrong(string index, string message)
    {
        File.WriteAllText(Path.Combine(folder, ModelFolder.IndexFile), index);
        Assert.Contains(message, Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder)).Message);
    }

    [Fact]
    public void AnIndexThatDisagreesWithItsShardsNamesTheTensorAndTheShard()
    {
        var map = hf.Keys.ToDictionary(k => k, k => k.StartsWith("model.layers.0.") || k.StartsWith("model.embed") ? Shard1 : Shard2);

        WriteIndex(Index(new(map) { ["model.norm.weight"] = "model-00003-of-00003.safetensors" }));
        Assert.Contains("shard model-00003-of-00003.safetensors (holding model.norm.weight) is not in the folder",
            Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder)).Message);

        WriteIndex(Index(new(map) { ["model.norm.weight"] = Shard1 }));
        var e = Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder));
        Assert.Contains($"weight_map puts model.norm.weight in {Shard1}, which does not hold them", e.Message);

        var missing = new Dictionary<string, string>(map);
        missing.Remove("model.layers.1.mlp.up_proj.weight");
        WriteIndex(Index(missing));
        Assert.Contains("holds model.layers.1.mlp.up_proj.weight, which weight_map does not list in this shard",
            Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder)).Message);
    }

    /// <summary>
    /// Faults in the second shard, each refused naming the file by its name (never the folder's path) and the tensor:
    /// the index and shard rewritten together, so only the tensor check can catch them.
    /// </summary>
    public static TheoryData<string, string> TensorFaults => new()
    {
        { "missing", "model.safetensors.index.json: 1 tensor(s) missing: model.layers.1.mlp.up_proj.weight" },
        { "unexpected", $"{Shard2}: 1 tensor(s) this LlamaForCausalLM does not have: model.layers.1.mlp.experts.0.w1.weight" },
        { "shape", $"{Shard2}: tensor model.norm.weight has shape [{Config.HiddenSize + 1}]; config.json makes it [{Config.HiddenSize}]" },
        { "dtype", $"{Shard2}: tensor model.norm.weight has dtype I32, which cannot be loaded (F32, F16, BF16 can)" },
    };

    [Theory]
    [MemberData(nameof(TensorFaults))]
    public void ATensorFaultInAShardIsRefusedNamingTheShardAndTheTensor(string fault, string message)
    {
        var shard = SafeTensors.Load(Path.Combine(folder, Shard2));
        switch (fault)
        {
            case "missing": shard.Remove("model.layers.1.mlp.up_proj.weight"); break;
            case "unexpected": shard["model.layers.1.mlp.experts.0.w1.weight"] = zeros(4, 4); break;
            case "shape": shard["model.norm.weight"] = ones(Config.HiddenSize + 1); break;
            case "dtype": shard["model.norm.weight"] = ones(Config.HiddenSize); break;   // written as F32, then relabelled I32 (same size)
        }
        RewriteShard2(shard);
        if (fault == "dtype")
        {
            string path = Path.Combine(folder, Shard2);
            var bytes = File.ReadAllBytes(path);
            var text = System.Text.Encoding.Latin1.GetString(bytes);
            int at = text.IndexOf("\"dtype\":\"F32\"", StringComparison.Ordinal);
            Assert.True(at > 0 && text.IndexOf("\"dtype\":\"F32\"", at + 1, StringComparison.Ordinal) < 0);   // the only F32 tensor
            bytes[at + 9] = (byte)'I';
            File.WriteAllBytes(path, bytes);
        }
        var e = Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder));
        Assert.Equal(message, e.Message);
        Assert.DoesNotContain(root.FullName, e.Message);
    }

    /// <summary>Sizes far beyond the files are refused before the model is built: no allocation of a million-wide model.</summary>
    [Theory]
    [InlineData("hidden_size", 1_000_000, "model.layers.0.self_attn.q_proj")]
    [InlineData("num_hidden_layers", 2_000_000_000, "model.layers.3.")]
    [InlineData("intermediate_size", 2_000_000_000, "model.layers.0.mlp.gate_proj")]
    public void AConfigFarLargerThanItsWeightsIsRefusedBeforeAllocating(string key, int value, string where)
    {
        var json = System.Text.Json.Nodes.JsonNode.Parse(ConfigJson)!;
        json[key] = value;
        File.WriteAllText(Path.Combine(folder, ModelFolder.ConfigFile), json.ToJsonString());
        var e = Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder));
        Assert.StartsWith("config.json: its sizes give the linear layers up to " + where, e.Message);
        Assert.Contains("more values than the weight files hold", e.Message);
    }

    [Fact]
    public void RotaryInverseFrequenciesAnOlderExportSavedPass()
    {
        var shard = SafeTensors.Load(Path.Combine(folder, Shard2));
        shard["model.layers.1.self_attn.rotary_emb.inv_freq"] = ones(Config.HeadDim / 2);
        RewriteShard2(shard);
        using var model = ModelFolder.Load<LlamaForCausalLM>(folder);
    }

    void RewriteShard2(Dictionary<string, Tensor> shard)
    {
        SafeTensors.Save(Path.Combine(folder, Shard2), shard, new Dictionary<string, string> { ["format"] = "pt" });
        var first = SafeTensors.ReadHeader(Path.Combine(folder, Shard1)).Tensors.Select(t => t.Name);
        WriteIndex(Index(first.Select(k => (k, Shard1)).Concat(shard.Keys.Select(k => (k, Shard2))).ToDictionary(x => x.Item1, x => x.Item2)));
        foreach (var t in shard.Values) t.Dispose();
    }

    [Fact]
    public void ATruncatedShardIsRefusedByItsHeaderCheckNamingTheShard()
    {
        string path = Path.Combine(folder, Shard2);
        using (var f = File.OpenWrite(path)) f.SetLength(f.Length - 64);
        var e = Assert.Throws<SafeTensorsException>(() => ModelFolder.Load(folder));
        Assert.Contains(Shard2, e.Message);
        Assert.Contains("beyond the", e.Message);
    }

    [Fact]
    public void AFolderWithoutWeightsSaysWhichFilesItLooksFor()
    {
        File.Delete(Path.Combine(folder, ModelFolder.IndexFile));
        Assert.Contains("has neither model.safetensors nor model.safetensors.index.json",
            Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder)).Message);
    }

    [Fact]
    public void ARopeTypeNotImplementedIsRefusedRatherThanSilentlyIgnored()
    {
        File.WriteAllText(Path.Combine(folder, ModelFolder.ConfigFile),
            ConfigJson.Replace("\"rope_scaling\": null", "\"rope_scaling\": {\"rope_type\": \"proportional\", \"factor\": 4.0}"));
        Assert.Contains("rope_scaling rope_type 'proportional' is not supported", Assert.Throws<InvalidDataException>(() => ModelFolder.Load(folder)).Message);
    }

    [Fact]
    public void ALlama3InstructConfigLoadsWithItsRopeScalingAndEveryEosId()
    {
        using var scope = NewDisposeScope();
        // Llama 3.1/3.2 Instruct: llama3 rope scaling and a list of end-of-sequence ids.
        File.WriteAllText(Path.Combine(folder, ModelFolder.ConfigFile), ConfigJson
            .Replace("\"rope_scaling\": null",
                "\"rope_scaling\": {\"factor\": 32.0, \"high_freq_factor\": 4.0, \"low_freq_factor\": 1.0, \"original_max_position_embeddings\": 16, \"rope_type\": \"llama3\"}")
            .Replace("\"eos_token_id\": 256", "\"eos_token_id\": [256, 257, 258]"));
        using var model = ModelFolder.Load<LlamaForCausalLM>(folder);
        Assert.Equal([256, 257, 258], model.EosTokenIds);
        Assert.Equal(256, model.EosTokenId);
        string saved = Path.Combine(root.FullName, "saved");
        ModelFolder.Save(model, saved);
        var config = (LlamaConfig)ModelConfig.Load(Path.Combine(saved, ModelFolder.ConfigFile));
        Assert.Equal([256, 257, 258], config.EosTokenIds!);
        Assert.Equal(("llama3", 32.0, 16), (config.RopeScaling!.Kind, config.RopeScaling.Factor, config.RopeScaling.OriginalMaxPositionEmbeddings));

        // Position 0 has angle 0 either way; later positions turn by the scaled frequencies.
        File.WriteAllText(Path.Combine(folder, ModelFolder.ConfigFile), ConfigJson);
        using var unscaled = ModelFolder.Load<LlamaForCausalLM>(folder);
        using var _ = no_grad();
        var ids = Ids(1, 12, seed: 15);
        var (a, b) = (model.forward(ids), unscaled.forward(ids));
        AssertClose(a[0, 0], b[0, 0], 1e-6);
        Assert.True((a[0, 11] - b[0, 11]).abs().max().item<float>() > 1e-3);
    }
}
