using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using TorchSharp;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

/// <summary>
/// The families on Llama's decoder (Llama with a tied head, Qwen2, Qwen3, Mistral), scaled down from their real configs,
/// against a naive float64 reference written here from the Hugging Face equations: no cache, one head at a time.
/// </summary>
public sealed class DecoderFamiliesTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("decoder-families-").FullName;

    public DecoderFamiliesTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    /// <summary>Each family's features, on hidden 64, 2 layers, 4 query / 2 key-value heads, vocabulary 300.</summary>
    public static LlamaConfig ConfigOf(string family) => family switch
    {
        // Llama 3.2 1B's features: tied head, llama3 rope scaling (original context 16, so the test's positions cross its bands).
        "llama" => new LlamaConfig
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            RopeTheta = 500, TieWordEmbeddings = true, AttentionBias = true, MlpBias = true,
            RopeScaling = new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 16 },
        },
        // Qwen2.5 0.5B's: q/k/v biases, tied head; with linear rope scaling here to check that too.
        "qwen2" => new Qwen2Config
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            RopeTheta = 1000, TieWordEmbeddings = true, RmsNormEps = 1e-6, RopeScaling = new RopeScaling { RopeType = "linear", Factor = 2 },
        },
        // Qwen3's: q/k norms, head_dim 32 where hidden / heads is 16, untied head.
        "qwen3" => new Qwen3Config
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDimension = 32, RopeTheta = 1000, RmsNormEps = 1e-6,
        },
        // Mistral 7B v0.1's sliding window, 3 here, shorter than the test sequences.
        "mistral" => new MistralConfig
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            RopeTheta = 1000, SlidingWindow = 3,
        },
        _ => throw new ArgumentException(family),
    };

    public static TheoryData<string> Families => new("llama", "qwen2", "qwen3", "mistral");

    /// <summary>A frozen model with seeded random weights; norms away from 1 and biases away from 0, so both matter.</summary>
    public static LlamaForCausalLM CreateFamily(string family, long seed = 1, int vocabulary = 300)
    {
        var model = (LlamaForCausalLM)(ConfigOf(family) with { VocabSize = vocabulary }).CreateModel();
        using var g = new Generator((ulong)seed);
        using (no_grad())
        using (NewDisposeScope())
            foreach (var (name, p) in model.named_parameters())
            {
                if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.uniform_(0.5, 1.5, g);
                else if (p.dim() == 1) p.normal_(0, 0.5, g);
                // A tied head's weight is the embeddings (listed once): drawn at a head's scale, so logits stay O(1).
                else if (name == "model.embed_tokens.weight") p.normal_(0, model.Config.TieWordEmbeddings ? 1 / Math.Sqrt(p.shape[1]) : 1, g);
                else p.normal_(0, 1 / Math.Sqrt(p.shape[1]), g);
            }
        foreach (var p in model.parameters()) p.requires_grad = false;
        model.eval();
        return model;
    }

    static Tensor FamilyIds(long batch, long length, long seed)
    {
        using var g = new Generator((ulong)seed);
        return randint(0, 300, [batch, length], ScalarType.Int64, generator: g);
    }

    [Theory, MemberData(nameof(Families))]
    public void WholeModelMatchesTheNaiveReference(string family)
    {
        using var scope = NewDisposeScope();
        using var model = CreateFamily(family);
        using var _ = no_grad();
        var ids = FamilyIds(2, 9, seed: 7);
        AssertClose(Reference.Model(ids, model), model.forward(ids), 1e-4);
    }

    /// <summary>Prefill, then one token at a time over the KV cache (with and without an explicit mask) equals the full forward.</summary>
    [Theory, MemberData(nameof(Families))]
    public void DecodingWithTheCacheEqualsTheFullForward(string family)
    {
        using var scope = NewDisposeScope();
        using var model = CreateFamily(family);
        using var _ = no_grad();
        var ids = FamilyIds(1, 10, seed: 8);
        var full = model.forward(ids);
        using var cache = new KvCache(model.NumLayers);
        var steps = new List<Tensor> { model.Forward(ids.narrow(1, 0, 2), cache) };
        for (long p = 2; p < 10; p++)
            steps.Add(p % 2 == 0
                ? model.Forward(ids.narrow(1, p, 1), cache)
                : model.Forward(ids.narrow(1, p, 1), tensor(new[] { p }).view(1, 1), ones(1, 1, 1, p + 1, ScalarType.Bool), cache));
        AssertClose(full, cat(steps, 1), 1e-4);
    }

    /// <summary>The shapes the config lists without building the model (adapter validation reads them) are the model's.</summary>
    [Theory, MemberData(nameof(Families))]
    public void TheConfigsLayerShapesAreTheModels(string family)
    {
        using var model = CreateFamily(family);
        Assert.Equal(model.Config.LinearShapes().Order(), model.LinearLayers().Select(l => (l.Path, l.Layer.InFeatures, l.Layer.OutFeatures)).Order());
        Assert.Equal(model.Config.NormShapes().Order(), model.NormLayers().Select(n => (n.Path, n.Layer.Size)).Order());
    }

    [Theory, MemberData(nameof(Families))]
    public void SaveThenLoadGivesIdenticalLogitsAndStoresATiedHeadOnce(string family)
    {
        using var scope = NewDisposeScope();
        using var model = CreateFamily(family);
        ModelFolder.Save(model, dir);
        using var loaded = ModelFolder.Load<LlamaForCausalLM>(dir);
        Assert.Equal(model.GetType(), loaded.GetType());
        Assert.Equal(File.ReadAllText(Path.Combine(dir, ModelFolder.ConfigFile)), System.Text.Json.JsonSerializer.Serialize(loaded.Config, loaded.Config.GetType(),
            new System.Text.Json.JsonSerializerOptions { WriteIndented = true, DefaultIgnoreCondition = System.Text.Json.Serialization.JsonIgnoreCondition.WhenWritingNull }));
        using var file = SafeTensorsFile.Open(Path.Combine(dir, ModelFolder.WeightsFile));
        var stored = file.Tensors.Select(t => t.Name).ToList();
        Assert.Equal(!model.Config.TieWordEmbeddings, stored.Contains("lm_head.weight"));
        Assert.Equal(model.Config.QkvBias, stored.Contains("model.layers.0.self_attn.k_proj.bias"));
        Assert.Equal(model.Config.QkNorm, stored.Contains("model.layers.1.self_attn.q_norm.weight"));
        using var _ = no_grad();
        var ids = FamilyIds(2, 7, seed: 9);
        Assert.Equal(Bytes(model.forward(ids)), Bytes(loaded.forward(ids)));
    }

    [Fact]
    public void TheConfigSpellingsOfTransformers5Load()
    {
        string path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, """
            {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "dtype": "bfloat16", "vocab_size": 300, "hidden_size": 64,
             "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32,
             "rope_parameters": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1000000.0}, "layer_types": ["full_attention", "full_attention"],
             "use_sliding_window": false, "sliding_window": null, "max_window_layers": 28, "some_future_cosmetic_key": 3}
            """);
        var config = (Qwen3Config)ModelConfig.Load(path);
        Assert.Equal(("bfloat16", 1_000_000.0, "linear", 32), (config.TorchDtype, config.Theta, config.Rope!.Kind, config.HeadDim));
    }

    /// <summary>The keys of released configs as transformers 4.x writes them (Qwen2.5-0.5B, Qwen3-0.6B, Mistral-7B-v0.1, Llama-3.2-1B), shapes scaled down.</summary>
    public static TheoryData<string> ReleasedConfigs => new(
        """
        {"architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151643, "hidden_act": "silu", "initializer_range": 0.02,
         "max_position_embeddings": 32768, "max_window_layers": 24, "model_type": "qwen2", "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768,
         "tie_word_embeddings": true, "torch_dtype": "bfloat16", "transformers_version": "4.40.1", "use_cache": true, "use_sliding_window": false
        """,
        """
        {"architectures": ["Qwen3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "head_dim": 32, "hidden_act": "silu", "max_window_layers": 28,
         "model_type": "qwen3", "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": null, "tie_word_embeddings": true,
         "torch_dtype": "bfloat16", "use_sliding_window": false
        """,
        """
        {"architectures": ["MistralForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu", "max_position_embeddings": 32768,
         "model_type": "mistral", "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "tie_word_embeddings": false, "torch_dtype": "bfloat16"
        """,
        """
        {"architectures": ["LlamaForCausalLM"], "attention_bias": false, "head_dim": 16, "hidden_act": "silu", "mlp_bias": false, "model_type": "llama",
         "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
         "original_max_position_embeddings": 8192, "rope_type": "llama3"}, "rope_theta": 500000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16"
        """);

    [Theory, MemberData(nameof(ReleasedConfigs))]
    public void ReleasedConfigsLoad(string start)
    {
        string path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, start + """, "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}""");
        var config = (LlamaConfig)ModelConfig.Load(path);
        Assert.Equal(config.Architectures![0], config.Architecture);
        using var model = config.CreateModel();
    }

    [Theory]
    [InlineData("qwen2", "\"use_sliding_window\": true", "use_sliding_window")]
    [InlineData("qwen2", "\"attention_bias\": true", "attention_bias")]
    [InlineData("mistral", "\"attention_bias\": true", "attention_bias")]
    [InlineData("qwen3", "\"mlp_bias\": true", "mlp_bias")]
    [InlineData("llama", "\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2.0}", "rope_scaling rope_type 'dynamic' is not supported")]
    [InlineData("qwen3", "\"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 4.0, \"rope_theta\": 1e6}", "rope_parameters rope_type 'yarn' is not supported")]
    [InlineData("llama", "\"rope_scaling\": {\"type\": \"longrope\"}", "rope_type 'longrope' is not supported")]
    [InlineData("llama", "\"partial_rotary_factor\": 0.5", "partial_rotary_factor 0.5 changes the math and is not implemented for model_type 'llama'")]
    [InlineData("llama", "\"sliding_window\": 4096", "sliding_window 4096 changes the math")]
    [InlineData("qwen2", "\"layer_types\": [\"sliding_attention\", \"full_attention\"]", "layer_types")]
    [InlineData("mistral", "\"hidden_act\": \"gelu\"", "hidden_act 'gelu'")]
    [InlineData("mistral", "\"sliding_window\": 0", "sliding_window is 0")]
    [InlineData("llama", "\"num_local_experts\": 8", "num_local_experts 8 changes the math")]
    [InlineData("qwen3", "\"attn_logit_softcapping\": 50.0", "attn_logit_softcapping 50.0 changes the math and is not implemented for model_type 'qwen3'")]
    [InlineData("mistral", "\"no_rope_layers\": [1, 0]", "no_rope_layers [1, 0] changes the math")]
    [InlineData("qwen2", "\"hidden_activation\": \"gelu_pytorch_tanh\"", "hidden_activation \"gelu_pytorch_tanh\" changes the math")]
    [InlineData("llama", "\"rope_scaling\": {\"type\": \"mrope\", \"mrope_section\": [16, 24, 24]}", "rope_type 'mrope' is not supported")]
    public void AConfigValueTheCodeDoesNotImplementIsRefusedByFileAndKey(string family, string entry, string message)
    {
        string path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, $$"""
            {"model_type": "{{family}}", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "num_key_value_heads": 2, {{entry}}}
            """);
        var error = Assert.Throws<InvalidDataException>(() => ModelConfig.Load(path)).Message;
        Assert.StartsWith("config.json: ", error);   // the file by its name, never the folder it is in
        Assert.Contains(message, error);
    }

    /// <summary>Multimodal and mixture-of-experts types are refused saying what they are, not by the generic list alone.</summary>
    [Theory]
    [InlineData("qwen2_5_vl", "is a vision-language model (Qwen2.5-VL)")]
    [InlineData("qwen2_vl", "is a vision-language model (Qwen2-VL)")]
    [InlineData("llava", "is a vision-language model (LLaVA)")]
    [InlineData("phi3_v", "is a vision-language model (Phi-3 Vision)")]
    [InlineData("mixtral", "is a mixture-of-experts model (Mixtral); this service runs dense models only")]
    [InlineData("qwen3_moe", "is a mixture-of-experts model (Qwen3 MoE)")]
    [InlineData("qwen2_moe", "is a mixture-of-experts model")]
    [InlineData("falcon", "is not supported")]
    public void AModelTypeThisServiceDoesNotRunIsRefusedSayingWhatItIs(string modelType, string message)
    {
        string path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, $$"""{"model_type": "{{modelType}}", "vocab_size": 300, "hidden_size": 64}""");
        var error = Assert.Throws<InvalidDataException>(() => ModelConfig.Load(path)).Message;
        Assert.StartsWith($"config.json: model_type '{modelType}' {message}", error);
        Assert.Contains("(supported: llama, qwen2, qwen3, mistral, gpt2, vit", error);
        Assert.DoesNotContain(dir, error);
    }

    /// <summary>
    /// A family's allowlist is its properties' JSON names: a key it implements is its own to check (Mistral's window, Qwen's
    /// use_sliding_window), one it does not is refused only if it changes the math, and cosmetic unknown keys pass.
    /// </summary>
    [Fact]
    public void EachFamilyImplementsItsOwnKeysAndPassesCosmeticOnes()
    {
        Assert.Contains("sliding_window", new MistralConfig().ImplementedKeys);
        Assert.Contains("use_sliding_window", new Qwen2Config().ImplementedKeys);
        Assert.DoesNotContain("sliding_window", new LlamaConfig().ImplementedKeys);
        Assert.Contains("n_embd", new Gpt2Config().ImplementedKeys);
        Assert.Contains("qkv_bias", new VitConfig().ImplementedKeys);
        string path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, """
            {"model_type": "llama", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "pretraining_tp": 1, "attention_dropout": 0.0, "initializer_range": 0.02, "some_future_cosmetic_key": {"a": 1}, "partial_rotary_factor": 1.0,
             "layer_types": ["full_attention", "full_attention"], "num_local_experts": null}
            """);
        Assert.IsType<LlamaConfig>(ModelConfig.Load(path));
    }

    /// <summary>The Hugging Face equations in float64, written without the model's helpers.</summary>
    static class Reference
    {
        static Tensor F64(Tensor t) => t.detach().to_type(ScalarType.Float64);

        static Tensor Linear(Tensor x, AdaptableLinear layer) =>
            layer.bias is null ? x.matmul(F64(layer.weight).t()) : x.matmul(F64(layer.weight).t()) + F64(layer.bias);

        static Tensor Norm(Tensor x, RmsNorm norm, double eps) =>
            x / ((x * x).sum(-1, keepdim: true) / x.shape[^1] + eps).sqrt() * F64(norm.weight);

        /// <summary>The rotation frequency of pair i, as transformers' modeling_rope_utils.py computes it for default, linear and llama3.</summary>
        static double Frequency(LlamaConfig c, int i)
        {
            double f = Math.Pow(c.Theta, -2.0 * i / c.HeadDim);
            if (c.Rope is not { } s) return f;
            if (s.Kind == "linear") return f / s.Factor!.Value;
            double context = s.OriginalMaxPositionEmbeddings!.Value, factor = s.Factor!.Value, low = s.LowFreqFactor!.Value, high = s.HighFreqFactor!.Value;
            double wavelength = 2 * Math.PI / f;
            if (wavelength < context / high) return f;
            if (wavelength > context / low) return f / factor;
            double smooth = (context / wavelength - low) / (high - low);
            return (1 - smooth) * f / factor + smooth * f;
        }

        /// <summary>One head's x [b, t, hd] rotated at positions 0..t-1: (x1, x2) → (x1 cos − x2 sin, x2 cos + x1 sin).</summary>
        static Tensor Rope(Tensor x, LlamaConfig c)
        {
            long t = x.shape[1], half = c.HeadDim / 2;
            var angles = new double[t * half];
            for (long p = 0; p < t; p++)
                for (int i = 0; i < half; i++)
                    angles[p * half + i] = p * Frequency(c, i);
            var a = tensor(angles, [t, half]);
            Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
            return cat([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin()], -1);
        }

        static Tensor Attention(Tensor x, LlamaAttention attention, LlamaConfig c)
        {
            long b = x.shape[0], t = x.shape[1];
            int heads = c.NumAttentionHeads, kvHeads = c.KeyValueHeads, hd = c.HeadDim;
            Tensor q = Linear(x, attention.q_proj), k = Linear(x, attention.k_proj), v = Linear(x, attention.v_proj);
            // Query i sees key j when j ≤ i and, with a sliding window W, i − j < W.
            var hidden = new bool[t * t];
            for (int i = 0; i < t; i++)
                for (int j = 0; j < t; j++)
                    hidden[i * t + j] = j > i || (c.AttentionWindow is { } w && i - j >= w);
            var masked = tensor(hidden, [t, t]);
            var outputs = new Tensor[heads];
            for (int h = 0; h < heads; h++)
            {
                int kv = h / (heads / kvHeads);
                Tensor qh = q.narrow(-1, h * hd, hd), kh = k.narrow(-1, kv * hd, hd), vh = v.narrow(-1, kv * hd, hd);   // [b, t, hd]
                if (attention.q_norm is { } qn) (qh, kh) = (Norm(qh, qn, c.RmsNormEps), Norm(kh, attention.k_norm!, c.RmsNormEps));
                (qh, kh) = (Rope(qh, c), Rope(kh, c));
                var scores = qh.matmul(kh.transpose(1, 2)) / Math.Sqrt(hd);                                            // [b, t, t]
                outputs[h] = scores.masked_fill(masked, double.NegativeInfinity).softmax(-1).matmul(vh);              // [b, t, hd]
            }
            return Linear(cat(outputs, -1), attention.o_proj);
        }

        static Tensor Mlp(Tensor x, LlamaMlp mlp)
        {
            var gate = Linear(x, mlp.gate_proj);
            return Linear(gate / (1 + (-gate).exp()) * Linear(x, mlp.up_proj), mlp.down_proj);
        }

        public static Tensor Model(Tensor ids, LlamaForCausalLM model)
        {
            var c = model.Config;
            long b = ids.shape[0], t = ids.shape[1];
            var embeddings = F64(model.model.embed_tokens.weight!);
            var h = embeddings.index_select(0, ids.flatten()).view(b, t, -1);
            foreach (var layer in model.model.layers)
            {
                h = h + Attention(Norm(h, layer.input_layernorm, c.RmsNormEps), layer.self_attn, c);
                h = h + Mlp(Norm(h, layer.post_attention_layernorm, c.RmsNormEps), layer.mlp);
            }
            // A tied head is the embedding matrix itself.
            var head = c.TieWordEmbeddings ? embeddings : F64(model.lm_head.weight);
            return Norm(h, model.model.norm, c.RmsNormEps).matmul(head.t());
        }
    }
}
