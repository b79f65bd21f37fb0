using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using TorchSharp;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

/// <summary>
/// The families on Llama's decoder (Llama with a tied head, Qwen2, Qwen3, Mistral, Phi-3, SmolLM3), scaled down from their
/// real configs, against a naive float64 reference written here from the Hugging Face equations: no cache, one head at a
/// time, each rope type from its paper's equations.
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
        // Qwen3's: q/k norms, head_dim 32 where hidden / heads is 16, untied head; YaRN as Qwen3's model cards configure it
        // (factor 4), over an original context of 8 here and beta_fast 8 so the ramp spans several pairs.
        "qwen3" => new Qwen3Config
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDimension = 32, RopeTheta = 1000, RmsNormEps = 1e-6, MaxPositionEmbeddings = 32,
            RopeScaling = new RopeScaling { RopeType = "yarn", Factor = 4, OriginalMaxPositionEmbeddings = 8, BetaFast = 8 },
        },
        // Mistral 7B v0.1's sliding window, 3 here, shorter than the test sequences.
        "mistral" => new MistralConfig
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            RopeTheta = 1000, SlidingWindow = 3,
        },
        // Phi-4-mini's: fused qkv_proj and gate_up_proj, 3/4 of each head rotated, tied head, LongRoPE (original context 4
        // here, so the test sequences cross it); a sliding window of 5 as Phi-3-mini-4k has one (2047).
        "phi3" => new Phi3Config
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 96, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            RopeTheta = 1000, TieWordEmbeddings = true, PartialRotaryFactor = 0.75, MaxPositionEmbeddings = 16, OriginalMaxPositionEmbeddings = 4,
            SlidingWindow = 5,
            RopeScaling = new RopeScaling { Type = "longrope", ShortFactor = [1, 1.1, 1.5, 2, 3, 4], LongFactor = [1, 1.5, 3, 6, 12, 20] },
        },
        // SmolLM3's: layer 1 without rope (NoPE), tied head; with dynamic NTK scaling past a context of 4 here.
        "smollm3" => new SmolLM3Config
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            RopeTheta = 1000, MaxPositionEmbeddings = 4, NoRopeLayers = [1, 0], RopeScaling = new RopeScaling { RopeType = "dynamic", Factor = 4 },
        },
        // Gemma 2's features, with a head_dim (32) and query_pre_attn_scalar (24) of their own, a window of 3, and caps low
        // enough that these weights' scores and logits reach them.
        "gemma2" => new Gemma2Config
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDimension = 32, QueryPreAttnScalar = 24, RopeTheta = 1000, SlidingWindow = 3, AttnLogitSoftcapping = 2, FinalLogitSoftcapping = 5,
        },
        // Gemma 3's: q/k norms, local layers 0 and 2 (sliding_window_pattern 2 here, 6 in the releases) with their own rope base,
        // the global layer 1 with linear rope scaling (gemma-3-4b's factor 8).
        "gemma3_text" => new Gemma3TextConfig
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 3, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDimension = 32, QueryPreAttnScalar = 32, RopeTheta = 1000, RopeLocalBaseFreq = 100, SlidingWindow = 3, SlidingWindowPattern = 2,
            RopeScaling = new RopeScaling { RopeType = "linear", Factor = 8 },
        },
        // Qwen3-30B-A3B's: Qwen3's attention, 4 experts here (128 there) with top-2 (8) renormalised, moe_intermediate_size
        // 32 (768); layer 1 dense through mlp_only_layers, so both kinds of layer are checked.
        "qwen3_moe" => new Qwen3MoeConfig
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDimension = 32, RopeTheta = 1000, NumExperts = 4, NumExpertsPerTok = 2, MoeIntermediateSize = 32, NormTopkProb = true, MlpOnlyLayers = [1],
        },
        _ => throw new ArgumentException(family),
    };

    public static TheoryData<string> Families => new("llama", "qwen2", "qwen3", "mistral", "phi3", "smollm3", "gemma2", "gemma3_text", "qwen3_moe");

    /// <summary>A frozen model with seeded random weights; norms away from 1 and biases away from 0, so both matter.</summary>
    public static LlamaForCausalLM CreateFamily(string family, long seed = 1, int vocabulary = 300, LlamaConfig? config = null)
    {
        var model = (LlamaForCausalLM)((config ?? ConfigOf(family)) with { VocabSize = vocabulary }).CreateModel();
        double offset = model.Config.NormOffset;   // Gemma's norms scale by 1 + w: the same effective scales, 0.5 to 1.5
        using var g = new Generator((ulong)seed);
        using (no_grad())
        using (NewDisposeScope())
        {
            foreach (var (name, p) in model.named_parameters())
            {
                if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.uniform_(0.5 - offset, 1.5 - offset, g);
                else if (p.dim() == 1) p.normal_(0, 0.5, g);
                else if (name == "model.embed_tokens.weight") p.normal_(0, 1, g);
                else p.normal_(0, 1 / Math.Sqrt(p.shape[1]), g);
            }
            // A tied head's weight is the embeddings, listed once: drawn again last at a head's scale (as when the head
            // was listed too), so logits stay O(1) and every family's weights stay the ones its tests were written on.
            if (model.Config.TieWordEmbeddings) model.lm_head.weight.normal_(0, 1 / Math.Sqrt(model.lm_head.weight.shape[1]), g);
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
        AssertClose(Reference.Model(ids, model, Enumerable.Repeat(9, 9).ToArray()), model.forward(ids), 1e-4);
    }

    /// <summary>
    /// The reference agreeing means something only where each Gemma option changes the logits of these weights: turned to
    /// its neutral value, each does (so a model ignoring it would fail the comparison above).
    /// </summary>
    [Theory]
    [InlineData("gemma2", "attn_logit_softcapping")]
    [InlineData("gemma2", "final_logit_softcapping")]
    [InlineData("gemma2", "sliding_window")]
    [InlineData("gemma2", "query_pre_attn_scalar")]
    [InlineData("gemma3_text", "rope_local_base_freq")]
    [InlineData("gemma3_text", "rope_scaling")]
    [InlineData("gemma3_text", "sliding_window_pattern")]
    public void EachGemmaOptionChangesTheLogits(string family, string key)
    {
        using var scope = NewDisposeScope();
        var config = ConfigOf(family);
        LlamaConfig neutral = key switch
        {
            "attn_logit_softcapping" => (Gemma2Config)config with { AttnLogitSoftcapping = null },
            "final_logit_softcapping" => (Gemma2Config)config with { FinalLogitSoftcapping = null },
            "sliding_window" => (Gemma2Config)config with { SlidingWindow = null },
            "query_pre_attn_scalar" => (Gemma2Config)config with { QueryPreAttnScalar = config.HeadDim },
            "rope_local_base_freq" => (Gemma3TextConfig)config with { RopeLocalBaseFreq = config.Theta },
            "rope_scaling" => (Gemma3TextConfig)config with { RopeScaling = null },
            _ => (Gemma3TextConfig)config with { SlidingWindowPattern = 1 },   // every layer global
        };
        using var model = CreateFamily(family);
        using var changed = CreateFamily(family, config: neutral);
        using var _ = no_grad();
        var ids = FamilyIds(2, 9, seed: 7);
        Assert.True((model.forward(ids) - changed.forward(ids)).abs().max().item<float>() > 1e-3, key);
    }

    /// <summary>
    /// Prefill, then one token at a time over the KV cache (with and without an explicit mask) equals the reference with
    /// each position rotated as it was written: at the prompt's length for the prompt, then at its own position + 1 (what
    /// transformers' generate does; it matters only to the rope types that read the length, dynamic and longrope). For the
    /// others it is also the full forward.
    /// </summary>
    [Theory, MemberData(nameof(Families))]
    public void DecodingWithTheCacheEqualsTheFullForward(string family)
    {
        using var scope = NewDisposeScope();
        using var model = CreateFamily(family);
        using var _ = no_grad();
        var ids = FamilyIds(1, 10, seed: 8);
        var full = model.forward(ids);
        int[] written = [2, 2, 3, 4, 5, 6, 7, 8, 9, 10];
        using var cache = new KvCache(model.NumLayers);
        var steps = new List<Tensor> { model.Forward(ids.narrow(1, 0, 2), cache) };
        for (long p = 2; p < 10; p++)
            steps.Add(p % 2 == 0
                ? model.Forward(ids.narrow(1, p, 1), cache)
                : model.Forward(ids.narrow(1, p, 1), tensor(new[] { p }).view(1, 1), ones(1, 1, 1, p + 1, ScalarType.Bool), cache));
        var decoded = cat(steps, 1);
        AssertClose(Reference.Model(ids, model, written), decoded, 1e-4);
        if (model.Config.Rope?.Kind is not ("dynamic" or "longrope")) AssertClose(full, decoded, 1e-4);
        else Assert.True((full - decoded).abs().max().item<float>() > 1e-3);   // the length-dependent rotation shows
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

    /// <summary>
    /// The keys of released configs as transformers 4.x writes them (Qwen2.5-0.5B, Qwen3-0.6B, Mistral-7B-v0.1, Llama-3.2-1B,
    /// SmolLM2-360M, Phi-3-mini-4k, Phi-3.5-mini, Phi-4-mini, SmolLM3-3B), shapes scaled down (LongRoPE's factor lists to
    /// the scaled rotary dimension / 2, no_rope_layers to 2 layers).
    /// </summary>
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
        """,
        """
        {"architectures": ["LlamaForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
         "initializer_range": 0.02, "is_llama_config": true, "max_position_embeddings": 8192, "mlp_bias": false, "model_type": "llama", "pad_token_id": 2,
         "pretraining_tp": 1, "rms_norm_eps": 1e-05, "rope_interleaved": false, "rope_scaling": null, "rope_theta": 100000, "tie_word_embeddings": true,
         "torch_dtype": "bfloat16", "transformers_version": "4.42.3", "use_cache": true
        """,
        """
        {"architectures": ["Phi3ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000, "hidden_act": "silu",
         "initializer_range": 0.02, "max_position_embeddings": 4096, "model_type": "phi3", "original_max_position_embeddings": 4096, "pad_token_id": 32000,
         "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": null, "rope_theta": 10000.0, "sliding_window": 2047, "tie_word_embeddings": false,
         "torch_dtype": "bfloat16", "transformers_version": "4.40.2", "use_cache": true
        """,
        """
        {"architectures": ["Phi3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 1, "embd_pdrop": 0.0, "eos_token_id": 32000,
         "hidden_act": "silu", "max_position_embeddings": 131072, "model_type": "phi3", "original_max_position_embeddings": 4096, "pad_token_id": 32000,
         "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": {"long_factor": [1.08, 1.11, 1.14, 1.34, 1.59, 1.6, 1.62, 2.62],
         "short_factor": [1.0, 1.02, 1.04, 1.05, 1.05, 1.05, 1.06, 1.06], "type": "longrope"}, "rope_theta": 10000.0, "sliding_window": 262144,
         "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.43.3", "use_cache": true
        """,
        """
        {"architectures": ["Phi3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 199999, "embd_pdrop": 0.0,
         "eos_token_id": 199999, "full_attn_mod": 1, "hidden_act": "silu", "initializer_range": 0.02, "interpolate_factor": 1, "lm_head_bias": false,
         "max_position_embeddings": 131072, "mlp_bias": false, "model_type": "phi3", "original_max_position_embeddings": 4096, "pad_token_id": 199999,
         "partial_rotary_factor": 0.75, "resid_pdrop": 0.0, "rms_norm_eps": 1e-05, "rope_scaling": {"long_factor": [1, 1.12, 1.25, 1.4, 1.57, 1.76],
         "short_factor": [1, 1, 1, 1, 1, 1], "type": "longrope"}, "rope_theta": 10000.0, "sliding_window": 262144, "tie_word_embeddings": true,
         "torch_dtype": "bfloat16", "transformers_version": "4.45.0", "use_cache": true
        """,
        """
        {"architectures": ["SmolLM3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": null, "eos_token_id": 128012,
         "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 65536, "max_window_layers": 28, "mlp_bias": false, "model_type": "smollm3",
         "no_rope_layer_interval": 4, "no_rope_layers": [1, 0], "pad_token_id": 128004, "pretraining_tp": 2, "rms_norm_eps": 1e-06, "rope_scaling": null,
         "rope_theta": 5000000.0, "sliding_window": null, "use_cache": false, "use_sliding_window": false, "tie_word_embeddings": true, "torch_dtype": "bfloat16"
        """,
        // Qwen3-30B-A3B (experts 128 → 4, top-8 → top-2, moe_intermediate_size 768 → 32).
        """
        {"architectures": ["Qwen3MoeForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "bos_token_id": 151643, "decoder_sparse_step": 1,
         "eos_token_id": 151645, "head_dim": 32, "hidden_act": "silu", "initializer_range": 0.02, "max_position_embeddings": 40960, "max_window_layers": 48,
         "mlp_only_layers": [], "model_type": "qwen3_moe", "moe_intermediate_size": 32, "norm_topk_prob": true, "num_experts": 4, "num_experts_per_tok": 2,
         "output_router_logits": false, "rms_norm_eps": 1e-06, "rope_scaling": null, "rope_theta": 1000000.0, "router_aux_loss_coef": 0.001,
         "sliding_window": null, "tie_word_embeddings": false, "torch_dtype": "bfloat16", "transformers_version": "4.51.0", "use_cache": true,
         "use_sliding_window": false
        """);

    /// <summary>
    /// google/gemma-2-2b's and google/gemma-3-1b-it's config.json (transformers 4.42 and 4.50), every key but the sizes, and
    /// gemma-3-1b-it as transformers 4.53+ writes it (layer_types, no sliding_window_pattern).
    /// </summary>
    public static TheoryData<string> ReleasedGemmaConfigs => new(
        """
        {"architectures": ["Gemma2ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "attn_logit_softcapping": 50.0, "bos_token_id": 2,
         "cache_implementation": "hybrid", "eos_token_id": 1, "final_logit_softcapping": 30.0, "head_dim": 256, "hidden_act": "gelu_pytorch_tanh",
         "hidden_activation": "gelu_pytorch_tanh", "initializer_range": 0.02, "max_position_embeddings": 8192, "model_type": "gemma2", "pad_token_id": 0,
         "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06, "rope_theta": 10000.0, "sliding_window": 4096, "torch_dtype": "float32",
         "transformers_version": "4.42.4", "use_cache": true
        """,
        """
        {"architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "attn_logit_softcapping": null, "bos_token_id": 2,
         "cache_implementation": "hybrid", "eos_token_id": [1, 106], "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh",
         "initializer_range": 0.02, "max_position_embeddings": 32768, "model_type": "gemma3_text", "pad_token_id": 0, "query_pre_attn_scalar": 256,
         "rms_norm_eps": 1e-06, "rope_local_base_freq": 10000, "rope_scaling": null, "rope_theta": 1000000, "sliding_window": 512,
         "sliding_window_pattern": 6, "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0", "use_cache": true
        """,
        """
        {"architectures": ["Gemma3ForCausalLM"], "attention_bias": false, "attention_dropout": 0.0, "attn_logit_softcapping": null, "bos_token_id": 2,
         "eos_token_id": [1, 106], "final_logit_softcapping": null, "head_dim": 256, "hidden_activation": "gelu_pytorch_tanh", "layer_types": ["sliding_attention", "full_attention"],
         "max_position_embeddings": 32768, "model_type": "gemma3_text", "pad_token_id": 0, "query_pre_attn_scalar": 256, "rms_norm_eps": 1e-06,
         "rope_local_base_freq": 10000.0, "rope_scaling": null, "rope_theta": 1000000.0, "sliding_window": 512, "torch_dtype": "bfloat16", "use_bidirectional_attention": false
        """);

    [Theory, MemberData(nameof(ReleasedConfigs)), MemberData(nameof(ReleasedGemmaConfigs))]
    public void ReleasedConfigsLoad(string start)
    {
        string path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, start + """, "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2}""");
        var config = (LlamaConfig)ModelConfig.Load(path);
        Assert.Equal(config.Architectures![0], config.Architecture);
        using var model = config.CreateModel();
    }

    /// <summary>
    /// Qwen3 MoE's sparse block alone, on rows of different tokens, against the per-token reference with and without
    /// norm_topk_prob; the tokens do not all choose the same experts, and renormalising changes the output.
    /// </summary>
    [Fact]
    public void TheMixtureOfExpertsBlockRoutesEachTokenAsTheReference()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var outputs = new List<Tensor>();
        foreach (bool norm in new[] { true, false })
        {
            using var model = CreateFamily("qwen3_moe");
            var config = (Qwen3MoeConfig)model.Config with { NormTopkProb = norm };
            var block = new Qwen3MoeSparseMoeBlock(config);
            block.load_state_dict(model.model.layers[0].mlp.state_dict());
            using var g = new Generator(11);
            var x = randn([3, 5, 64], generator: g);
            var y = block.forward(x);
            AssertClose(Reference.Moe(x.to_type(ScalarType.Float64), block, config), y, 1e-5);
            var chosen = block.Routing(x).ne(0).flatten(0, 1);                                 // [15 tokens, 4 experts]
            Assert.Equal(15 * 2, chosen.sum().item<long>());                                    // top-2 per token
            Assert.True(chosen.any(0).all().item<bool>());                                      // every expert serves some token
            Assert.True(Enumerable.Range(0, 15).Select(i => string.Join(",", chosen[i].data<bool>().ToArray())).Distinct().Count() > 1);
            outputs.Add(y);
        }
        Assert.True((outputs[0] - outputs[1]).abs().max().item<float>() > 1e-3);
    }

    /// <summary>Which layers are sparse: every decoder_sparse_step-th layer not in mlp_only_layers (transformers' Qwen3MoeDecoderLayer).</summary>
    [Fact]
    public void DecoderSparseStepAndMlpOnlyLayersPickTheSparseLayers()
    {
        var config = (Qwen3MoeConfig)ConfigOf("qwen3_moe") with { NumHiddenLayers = 4, DecoderSparseStep = 2, MlpOnlyLayers = [3] };
        Assert.Equal([false, true, false, false], Enumerable.Range(0, 4).Select(config.IsSparse));
        using var model = (LlamaForCausalLM)config.CreateModel();
        Assert.Equal(["LlamaMlp", "Qwen3MoeSparseMoeBlock", "LlamaMlp", "LlamaMlp"], model.model.layers.Select(l => l.mlp.GetType().Name));
        Assert.Equal(128, model.model.layers[0].mlp is LlamaMlp dense ? dense.gate_proj.OutFeatures : 0);                     // intermediate_size
        Assert.Equal(32, ((Qwen3MoeSparseMoeBlock)model.model.layers[1].mlp).experts[3].gate_proj.OutFeatures);              // moe_intermediate_size
        Assert.Contains("model.layers.1.mlp.experts.3.down_proj", config.LinearPaths());
        Assert.DoesNotContain("model.layers.1.mlp.gate", config.LinearPaths());             // the router is frozen, never a target
    }

    /// <summary>transformers 5.x's fused 3D experts are refused naming the tensor, not read wrongly or reported as a stray key.</summary>
    [Fact]
    public void TheFusedExpertLayoutOfTransformers5IsRefusedByName()
    {
        using var scope = NewDisposeScope();
        using var model = CreateFamily("qwen3_moe");
        ModelFolder.Save(model, dir);
        string weights = Path.Combine(dir, ModelFolder.WeightsFile);
        var tensors = SafeTensors.Load(weights);
        foreach (string key in tensors.Keys.Where(k => k.StartsWith("model.layers.0.mlp.experts.", StringComparison.Ordinal)).ToList()) tensors.Remove(key);
        tensors["model.layers.0.mlp.experts.gate_up_proj"] = zeros(4, 64, 64);
        tensors["model.layers.0.mlp.experts.down_proj"] = zeros(4, 32, 64);
        SafeTensors.Save(weights, tensors);
        var error = Assert.Throws<InvalidDataException>(() => ModelFolder.Load<LlamaForCausalLM>(dir)).Message;
        Assert.Contains("model.layers.0.mlp.experts.", error);
        Assert.Contains("fused as one 3D tensor (transformers 5.x's layout)", error);
        Assert.DoesNotContain(dir, error);
    }

    /// <summary>google/gemma-3-4b-it's config.json (Gemma3ForConditionalGeneration): its text_config names only what differs from transformers' defaults.</summary>
    const string Gemma3Multimodal4B = """
        {"architectures": ["Gemma3ForConditionalGeneration"], "boi_token_index": 255999, "eoi_token_index": 256000, "eos_token_id": [1, 106],
         "image_token_index": 262144, "initializer_range": 0.02, "mm_tokens_per_image": 256, "model_type": "gemma3",
         "text_config": {"hidden_size": 2560, "intermediate_size": 10240, "model_type": "gemma3_text", "num_hidden_layers": 34,
                         "rope_scaling": {"factor": 8.0, "rope_type": "linear"}, "sliding_window": 1024},
         "torch_dtype": "bfloat16", "transformers_version": "4.50.0.dev0",
         "vision_config": {"hidden_size": 1152, "image_size": 896, "intermediate_size": 4304, "model_type": "siglip_vision_model",
                           "num_attention_heads": 16, "num_hidden_layers": 27, "patch_size": 14, "vision_use_head": false}}
        """;

    [Fact]
    public void AMultimodalGemma3ConfigLoadsAsItsTextModelWithTransformersDefaults()
    {
        string path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, Gemma3Multimodal4B);
        var c = (Gemma3TextConfig)ModelConfig.Load(path);
        Assert.Equal(("gemma3_text", nameof(Gemma3ForCausalLM), "bfloat16"), (c.ModelType, c.Architecture, c.TorchDtype));
        Assert.Equal((262_208, 2560, 10240, 34, 8, 4, 256), (c.VocabSize, c.HiddenSize, c.IntermediateSize, c.NumHiddenLayers, c.NumAttentionHeads, c.KeyValueHeads, c.HeadDim));
        Assert.Equal((1024, 256.0, 1e-6, 1_000_000.0, 10_000.0, true), (c.SlidingWindow, c.QueryPreAttnScalar, c.RmsNormEps, c.Theta, c.RopeLocalBaseFreq, c.TieWordEmbeddings));
        Assert.Equal([1, 106], c.EosTokenIds!);
        Assert.Equal(2, c.BosTokenId);
        Assert.Equal(("linear", 8.0), (c.Rope!.Kind, c.Rope.Factor!.Value));
        Assert.Equal((1_000_000.0, "linear"), (c.LayerRope(5).Shape.Theta, c.LayerRope(5).Scaling!.Kind));   // layer 6 of 6: global
        Assert.Equal((10_000.0, null), (c.LayerRope(4).Shape.Theta, c.LayerRope(4).Scaling));                  // local
        Assert.Equal((1024, (int?)null), (c.LayerWindow(0), c.LayerWindow(11)));
    }

    /// <summary>
    /// A Gemma3ForConditionalGeneration folder, scaled down: the language model under language_model.model.* (as the Hub's
    /// checkpoints store it) or model.language_model.* (as transformers ≥ 4.52 saves it), beside vision tower and projector
    /// tensors, loads as the text model with its logits; the vision tensors are skipped.
    /// </summary>
    [Theory]
    [InlineData("language_model.model.")]
    [InlineData("model.language_model.")]
    public void AMultimodalGemma3FolderLoadsItsLanguageModel(string prefix)
    {
        using var scope = NewDisposeScope();
        using var model = CreateFamily("gemma3_text");
        var c = (Gemma3TextConfig)model.Config;
        File.WriteAllText(Path.Combine(dir, "config.json"), """
            {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "eos_token_id": [1, 106], "torch_dtype": "float32",
             "text_config": {"hidden_size": 64, "intermediate_size": 128, "model_type": "gemma3_text", "num_hidden_layers": 3, "vocab_size": 300,
                             "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 32, "query_pre_attn_scalar": 32, "rope_theta": 1000,
                             "rope_local_base_freq": 100, "sliding_window": 3, "sliding_window_pattern": 2, "rope_scaling": {"factor": 8.0, "rope_type": "linear"}},
             "vision_config": {"hidden_size": 8, "model_type": "siglip_vision_model"}}
            """);
        var tensors = model.CheckpointTensors().ToDictionary(t => prefix + t.Key["model.".Length..], t => (Tensor)t.Parameter.detach());
        tensors[(prefix.StartsWith("model.") ? "model." : "") + "vision_tower.vision_model.post_layernorm.weight"] = ones(8);
        tensors[(prefix.StartsWith("model.") ? "model." : "") + "multi_modal_projector.mm_input_projection_weight"] = zeros(8, 64);
        SafeTensors.Save(Path.Combine(dir, ModelFolder.WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        using var loaded = ModelFolder.Load<LlamaForCausalLM>(dir);
        Assert.IsType<Gemma3ForCausalLM>(loaded);
        using var _ = no_grad();
        var ids = FamilyIds(2, 7, seed: 9);
        Assert.Equal(Bytes(model.forward(ids)), Bytes(loaded.forward(ids)));
    }

    [Theory]
    [InlineData("qwen2", "\"use_sliding_window\": true", "use_sliding_window")]
    [InlineData("qwen2", "\"attention_bias\": true", "attention_bias")]
    [InlineData("mistral", "\"attention_bias\": true", "attention_bias")]
    [InlineData("qwen3", "\"mlp_bias\": true", "mlp_bias")]
    [InlineData("llama", "\"rope_scaling\": {\"rope_type\": \"su\", \"factor\": 2.0}", "rope_scaling rope_type 'su' is not supported")]
    [InlineData("llama", "\"rope_scaling\": {\"rope_type\": \"dynamic\", \"factor\": 2.0, \"original_max_position_embeddings\": 1024}", "rope_scaling.original_max_position_embeddings 1024 differs from max_position_embeddings 2048")]
    [InlineData("qwen3", "\"rope_parameters\": {\"rope_type\": \"yarn\", \"factor\": 4.0, \"rope_theta\": 1e6, \"extrapolation_factor\": 1}", "rope_parameters.extrapolation_factor is not supported")]
    [InlineData("qwen3", "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0, \"low_freq_factor\": 1}", "rope_scaling.low_freq_factor is not read by rope_type 'yarn'")]
    [InlineData("qwen3", "\"rope_scaling\": {\"rope_type\": \"yarn\", \"factor\": 4.0, \"beta_fast\": 1, \"beta_slow\": 2}", "rope_scaling.beta_fast must not be below beta_slow")]
    [InlineData("llama", "\"rope_scaling\": {\"type\": \"longrope\", \"factor\": 2.0, \"short_factor\": [1, 1]}", "rope_scaling.short_factor must be 8 positive numbers")]
    [InlineData("llama", "\"rope_scaling\": {\"rope_type\": \"linear\", \"factor\": 2.0, \"short_factor\": [1]}", "rope_scaling.short_factor is not read by rope_type 'linear'")]
    [InlineData("phi3", "\"partial_rotary_factor\": 0.1", "partial_rotary_factor 0.1 gives 1 rotary dimensions")]
    [InlineData("phi3", "\"attention_bias\": true", "attention_bias true")]
    [InlineData("phi3", "\"lm_head_bias\": true", "lm_head_bias true")]
    [InlineData("smollm3", "\"no_rope_layers\": [1]", "no_rope_layers must list 0 or 1 for each of the 2 layers")]
    [InlineData("smollm3", "\"use_sliding_window\": true, \"sliding_window\": 8", "use_sliding_window true")]
    [InlineData("llama", "\"no_rope_layers\": [1, 0]", "no_rope_layers [1, 0] changes the math")]
    [InlineData("llama", "\"partial_rotary_factor\": 0.5", "partial_rotary_factor 0.5 changes the math and is not implemented for model_type 'llama'")]
    [InlineData("llama", "\"sliding_window\": 4096", "sliding_window 4096 changes the math")]
    [InlineData("qwen2", "\"layer_types\": [\"sliding_attention\", \"full_attention\"]", "layer_types")]
    [InlineData("mistral", "\"hidden_act\": \"gelu\"", "hidden_act 'gelu'")]
    [InlineData("mistral", "\"sliding_window\": 0", "sliding_window is 0")]
    [InlineData("llama", "\"num_local_experts\": 8", "num_local_experts 8 changes the math")]
    [InlineData("qwen3", "\"attn_logit_softcapping\": 50.0", "attn_logit_softcapping 50.0 changes the math and is not implemented for model_type 'qwen3'")]
    [InlineData("mistral", "\"no_rope_layers\": [1, 0]", "no_rope_layers [1, 0] changes the math")]
    [InlineData("qwen3", "\"num_experts\": 8", "num_experts 8 changes the math and is not implemented for model_type 'qwen3'")]
    [InlineData("qwen3", "\"mlp_only_layers\": [1]", "mlp_only_layers [1] changes the math")]
    [InlineData("qwen3_moe", "\"num_local_experts\": 8", "num_local_experts 8 changes the math and is not implemented for model_type 'qwen3_moe'")]
    [InlineData("qwen3_moe", "\"use_sliding_window\": true", "use_sliding_window true is not supported")]
    [InlineData("qwen3_moe", "\"num_experts\": 4, \"num_experts_per_tok\": 5", "num_experts_per_tok is 5; it must be between 1 and num_experts (4)")]
    [InlineData("qwen3_moe", "\"mlp_only_layers\": [2]", "mlp_only_layers lists layer 2; the model has layers 0 to 1")]
    [InlineData("qwen3_moe", "\"decoder_sparse_step\": 0", "decoder_sparse_step is 0")]
    [InlineData("qwen3_moe", "\"attn_logit_softcapping\": 50.0", "attn_logit_softcapping 50.0 changes the math and is not implemented for model_type 'qwen3_moe'")]
    [InlineData("qwen2", "\"hidden_activation\": \"gelu_pytorch_tanh\"", "hidden_activation \"gelu_pytorch_tanh\" changes the math")]
    [InlineData("llama", "\"rope_scaling\": {\"type\": \"mrope\", \"mrope_section\": [16, 24, 24]}", "rope_type 'mrope' is not supported")]
    [InlineData("gemma2", "\"hidden_activation\": \"relu6\"", "hidden_activation 'relu6' is not supported")]
    [InlineData("gemma2", "\"mlp_bias\": true", "mlp_bias")]
    [InlineData("gemma2", "\"layer_types\": [\"sliding_attention\"]", "layer_types has 1 entries for 2 layers")]
    [InlineData("gemma2", "\"layer_types\": [\"chunked_attention\", \"full_attention\"]", "layer_types entry 'chunked_attention'")]
    [InlineData("gemma2", "\"attn_logit_softcapping\": 0", "attn_logit_softcapping is 0")]
    [InlineData("gemma3_text", "\"use_bidirectional_attention\": true", "use_bidirectional_attention true changes the math")]
    [InlineData("gemma3_text", "\"rope_parameters\": {\"full_attention\": {\"rope_type\": \"default\", \"rope_theta\": 1e6}}", "rope_parameters is not supported for gemma3_text")]
    [InlineData("gemma3_text", "\"rope_scaling\": {\"rope_type\": \"mrope\", \"factor\": 8.0}", "rope_type 'mrope' is not supported")]
    [InlineData("gemma3", "\"vision_config\": {}", "needs a text_config object")]
    [InlineData("gemma3", "\"text_config\": {\"model_type\": \"llama\"}", "text_config.model_type 'llama' is not supported")]
    [InlineData("gemma3", "\"text_config\": {\"hidden_activation\": \"relu6\"}", "hidden_activation 'relu6'")]
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

    /// <summary>
    /// A padded training batch (TokenRows) of a 3-token and a 9-token example on Phi-3's LongRoPE (original context 4) and
    /// SmolLM3's dynamic NTK (past 4): the short row is rotated at its own length, as alone, not at the long row's.
    /// </summary>
    [Theory]
    [InlineData("phi3")]
    [InlineData("smollm3")]
    public void APaddedTrainingBatchRotatesEachRowAtItsOwnLength(string family)
    {
        using var scope = NewDisposeScope();
        using var model = CreateFamily(family);
        using var _ = no_grad();
        int[] shortIds = [5, 6, 7, 8], longIds = [9, 10, 11, 12, 13, 14, 15, 16, 17, 18];
        var rows = AdapterService.Core.Training.TokenRows.Collate([new(shortIds, [.. shortIds.Select(_ => true)]), new(longIds, [.. longIds.Select(_ => true)])], padId: 0, pack: false);
        var (input, blocks, head) = model.Chain(rows.Inputs, rows.Positions, rows.Mask);
        var batched = head(blocks.Aggregate(input, (h, block) => block(h)));                       // [2, 9, vocab]
        var alone = model.forward(tensor(shortIds[..^1].Select(i => (long)i).ToArray(), [1, 3]));   // [1, 3, vocab]
        AssertClose(alone, batched.narrow(0, 0, 1).narrow(1, 0, 3), 1e-5);
        AssertClose(model.forward(rows.Inputs.narrow(0, 1, 1)), batched.narrow(0, 1, 1), 1e-5);
    }

    /// <summary>Phi3Config's backward compatibility: rope_scaling "type" su or yarn is longrope (Phi-3-128k's early configs).</summary>
    [Theory]
    [InlineData("su")]
    [InlineData("yarn")]
    public void Phi3ReadsTheOldRopeTypeNamesAsLongRope(string type)
    {
        string path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, $$$"""
            {"model_type": "phi3", "vocab_size": 300, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
             "max_position_embeddings": 131072, "original_max_position_embeddings": 4096,
             "rope_scaling": {"type": "{{{type}}}", "short_factor": [1, 1, 1, 1, 1, 1, 1, 1], "long_factor": [1, 2, 3, 4, 5, 6, 7, 8]}}
            """);
        var config = (Phi3Config)ModelConfig.Load(path);
        Assert.Equal("longrope", config.Rope!.Kind);
        Assert.Equal(type, config.RopeScaling!.Kind);   // saved back as it came
    }

    /// <summary>SmolLM3 without no_rope_layers: every no_rope_layer_interval-th layer is NoPE (transformers' SmolLM3Config).</summary>
    [Fact]
    public void SmolLM3sDefaultNoPELayersAreEveryFourth()
    {
        var config = (SmolLM3Config)ConfigOf("smollm3") with { NumHiddenLayers = 8, NoRopeLayers = null };
        Assert.Equal([true, true, true, false, true, true, true, false], Enumerable.Range(0, 8).Select(config.UsesRope));
        Assert.Equal([true, false, true, false], Enumerable.Range(0, 4).Select((config with { NoRopeLayerInterval = 2 }).UsesRope));
    }

    /// <summary>
    /// Each rope type at the sizes of the models that use it, where the scaled-down families do not reach every regime:
    /// cos and sin for two rows of positions, one row past the original context and one within it (dynamic and longrope
    /// choose per row), against the reference's equations.
    /// </summary>
    [Theory]
    [InlineData("dynamic")]        // NTK by length, head_dim 128, trained context 4096
    [InlineData("yarn-qwen")]      // Qwen2.5's model card: factor 4 over 32768, theta 1e6
    [InlineData("yarn-gpt-oss")]   // gpt-oss's: factor 32 over 4096, truncate false, beta 32/1
    [InlineData("yarn-mscale")]    // DeepSeek's mscale / mscale_all_dim ratio (values changed so it is not 1)
    [InlineData("longrope-phi")]   // Phi-3.5-mini: factors per pair, 131072 over 4096
    [InlineData("longrope-factor")] // transformers 5.x without original_max_position_embeddings: factor and attention_factor given
    public void RopeTypeAnglesMatchTheReferenceAtFullScale(string name)
    {
        using var scope = NewDisposeScope();
        var shorts = Enumerable.Range(0, 48).Select(i => 1 + 0.01 * i).ToArray();
        var longs = Enumerable.Range(0, 48).Select(i => 1 + Math.Pow(1.15, i) / 10).ToArray();
        LlamaConfig basic = new() { VocabSize = 10, HiddenSize = 4096, IntermediateSize = 8, NumHiddenLayers = 1, NumAttentionHeads = 32 };
        LlamaConfig config = name switch
        {
            "dynamic" => basic with { MaxPositionEmbeddings = 4096, RopeTheta = 10000, RopeScaling = new RopeScaling { RopeType = "dynamic", Factor = 2 } },
            "yarn-qwen" => basic with { MaxPositionEmbeddings = 32768, RopeTheta = 1e6, RopeScaling = new RopeScaling { Type = "yarn", Factor = 4, OriginalMaxPositionEmbeddings = 32768 } },
            "yarn-gpt-oss" => basic with
            {
                HiddenSize = 2048, MaxPositionEmbeddings = 131072, RopeTheta = 150000,
                RopeScaling = new RopeScaling { RopeType = "yarn", Factor = 32, OriginalMaxPositionEmbeddings = 4096, BetaFast = 32, BetaSlow = 1, Truncate = false },
            },
            "yarn-mscale" => basic with
            {
                MaxPositionEmbeddings = 16384, RopeTheta = 10000,
                RopeScaling = new RopeScaling { RopeType = "yarn", Factor = 40, OriginalMaxPositionEmbeddings = 4096, Mscale = 1, MscaleAllDim = 0.5, BetaFast = 16, BetaSlow = 2 },
            },
            "longrope-phi" => new Phi3Config
            {
                VocabSize = 10, HiddenSize = 3072, IntermediateSize = 8, NumHiddenLayers = 1, NumAttentionHeads = 32, MaxPositionEmbeddings = 131072,
                OriginalMaxPositionEmbeddings = 4096, RopeScaling = new RopeScaling { Type = "longrope", ShortFactor = shorts, LongFactor = longs },
            },
            "longrope-factor" => basic with
            {
                HiddenSize = 3072, MaxPositionEmbeddings = 4096,
                RopeParameters = new RopeScaling { RopeType = "longrope", RopeTheta = 10000, Factor = 32, AttentionFactor = 1.2, ShortFactor = shorts, LongFactor = longs },
            },
            _ => throw new ArgumentException(name),
        };
        string path = Path.Combine(dir, "config.json");
        config.Save(path);
        config = (LlamaConfig)ModelConfig.Load(path);                         // the checks pass, and the JSON round-trips
        int original = config.Rope!.OriginalMaxPositionEmbeddings ?? (config as Phi3Config)?.OriginalMaxPositionEmbeddings ?? config.MaxPositionEmbeddings;
        long[][] rows = [[0, 1, 7, 300, original - 1, original + 500], [0, 2, 9, 301, original - 3, original - 1]];
        var (cos, sin) = new RotaryEmbedding(config.RopeShape, config.Rope).Angles(tensor(rows.SelectMany(r => r).ToArray(), [2, 6]));   // [2, 1, 6, rd]
        int half = config.RotaryDim / 2;
        for (int r = 0; r < 2; r++)
            for (int p = 0; p < 6; p++)
                for (int i = 0; i < half; i++)
                {
                    var (f, scale) = Reference.Frequency(config, i, (int)rows[r][^1] + 1);
                    double angle = rows[r][p] * f;
                    Assert.Equal(scale * Math.Cos(angle), cos[r, 0, p, i].item<float>(), 1e-5);
                    Assert.Equal(scale * Math.Sin(angle), sin[r, 0, p, i + half].item<float>(), 1e-5);
                }
        // The two rows differ in the length-dependent types: the first crossed the original context, the second did not.
        var (rowLong, rowShort) = (Reference.Frequency(config, half - 1, original + 501), Reference.Frequency(config, half - 1, original));
        Assert.Equal(name is "dynamic" or "longrope-phi" or "longrope-factor", rowLong != rowShort);
    }

    /// <summary>Multimodal and mixture-of-experts types are refused saying what they are, not by the generic list alone.</summary>
    [Theory]
    [InlineData("qwen2_5_vl", "is a vision-language model (Qwen2.5-VL)")]
    [InlineData("qwen2_vl", "is a vision-language model (Qwen2-VL)")]
    [InlineData("llava", "is a vision-language model (LLaVA)")]
    [InlineData("phi3_v", "is a vision-language model (Phi-3 Vision)")]
    [InlineData("mixtral", "is a mixture-of-experts model (Mixtral); this service runs one mixture-of-experts family, qwen3_moe")]
    [InlineData("qwen2_moe", "is a mixture-of-experts model")]
    [InlineData("falcon", "is not supported")]
    public void AModelTypeThisServiceDoesNotRunIsRefusedSayingWhatItIs(string modelType, string message)
    {
        string path = Path.Combine(dir, "config.json");
        File.WriteAllText(path, $$"""{"model_type": "{{modelType}}", "vocab_size": 300, "hidden_size": 64}""");
        var error = Assert.Throws<InvalidDataException>(() => ModelConfig.Load(path)).Message;
        Assert.StartsWith($"config.json: model_type '{modelType}' {message}", error);
        Assert.Contains("(supported: llama, qwen2, qwen3, mistral, phi3, smollm3, gpt2, vit", error);
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

        /// <summary>x / rms(x) times the weight w, or Gemma's 1 + w.</summary>
        static Tensor Norm(Tensor x, RmsNorm norm, LlamaConfig c) =>
            x / ((x * x).sum(-1, keepdim: true) / x.shape[^1] + c.RmsNormEps).sqrt() * (F64(norm.weight) + (c is Gemma2Config ? 1 : 0));

        /// <summary>Gemma's local layers: as layer_types says, else Gemma 2's even layers, Gemma 3's all but every sliding_window_pattern-th.</summary>
        static bool Local(LlamaConfig c, int layer) => c switch
        {
            Gemma2Config { LayerTypes: { } types } => types[layer] == "sliding_attention",
            Gemma3TextConfig g => (layer + 1) % g.SlidingWindowPattern!.Value != 0,
            Gemma2Config => layer % 2 == 0,
            _ => false,
        };

        /// <summary>How many of the latest keys layer <paramref name="layer"/> sees: the family's window everywhere, Gemma's on local layers.</summary>
        static int? Window(LlamaConfig c, int layer) => c is Gemma2Config g ? (Local(c, layer) ? g.SlidingWindow : null) : c.AttentionWindow;

        /// <summary>
        /// Pair i's rotation frequency for a sequence of length ℓ, and the factor on cos and sin, from each rope type's
        /// equations (transformers' modeling_rope_utils.py names; d the rotated dimensions, L the original context).
        /// </summary>
        public static (double Frequency, double Scale) Frequency(LlamaConfig c, int i, int length, int layer = -1)
        {
            int d = c.RotaryDim;
            // Gemma 3's local layers rotate with rope_local_base_freq and no scaling.
            bool local = c is Gemma3TextConfig && layer >= 0 && Local(c, layer);
            double theta = local ? ((Gemma3TextConfig)c).RopeLocalBaseFreq : c.Theta, f = Math.Pow(theta, -2.0 * i / d);
            if ((local ? null : c.Rope) is not { Kind: not "default" } s) return (f, 1);
            switch (s.Kind)
            {
                case "linear":
                    return (f / s.Factor!.Value, 1);
                case "dynamic":
                {
                    // NTK-aware: θ' = θ (factor · ℓ / L − (factor − 1))^(d / (d − 2)) once ℓ > L = max_position_embeddings.
                    double L = c.MaxPositionEmbeddings, l = Math.Max(length, L), factor = s.Factor!.Value;
                    return (Math.Pow(theta * Math.Pow(factor * l / L - (factor - 1), d / (d - 2.0)), -2.0 * i / d), 1);
                }
                case "yarn":
                {
                    // YaRN (arXiv:2309.00071) §3.2: pair i turns r(i) = L / (2π / f) times over L; r > β_fast keeps f, r < β_slow
                    // takes f / factor, ramped linearly between the bounding pair indices (floored, ceiled); §3.4: √(1/t) = 0.1 ln s + 1.
                    // truncate false (gpt-oss) keeps the bounds fractional; mscale / mscale_all_dim (DeepSeek) replace √(1/t) by a ratio of two.
                    double L = s.OriginalMaxPositionEmbeddings ?? c.MaxPositionEmbeddings, factor = s.Factor!.Value;
                    double Bound(double rotations) => d * Math.Log(L / (rotations * 2 * Math.PI)) / (2 * Math.Log(theta));
                    double low = Bound(s.BetaFast ?? 32), high = Bound(s.BetaSlow ?? 1);
                    if (s.Truncate != false) (low, high) = (Math.Floor(low), Math.Ceiling(high));
                    (low, high) = (Math.Max(low, 0), Math.Min(high, d - 1));
                    double ramp = Math.Clamp((i - low) / (high - low), 0, 1);
                    double M(double m) => 0.1 * m * Math.Log(factor) + 1;
                    double scale = s.AttentionFactor ?? (s.Mscale is { } ms && s.MscaleAllDim is { } all ? M(ms) / M(all) : M(1));
                    return (f / factor * ramp + f * (1 - ramp), scale);
                }
                case "longrope":
                {
                    // LongRoPE (arXiv:2402.13753): f / λᵢ, λ the short factors up to L and the long ones past it; Phi-3's scale
                    // √(1 + ln(max / L) / ln L).
                    // Without an original context, factor and attention_factor as given (transformers 5.x configs).
                    int? given = (c as Phi3Config)?.OriginalMaxPositionEmbeddings ?? s.OriginalMaxPositionEmbeddings;
                    int L = given ?? c.MaxPositionEmbeddings;
                    double extension = given is null ? s.Factor!.Value : (double)c.MaxPositionEmbeddings / L;
                    return (f / (length > L ? s.LongFactor! : s.ShortFactor!)[i], s.AttentionFactor ?? Math.Sqrt(1 + Math.Log(extension) / Math.Log(L)));
                }
            }
            double context = s.OriginalMaxPositionEmbeddings!.Value, llamaFactor = s.Factor!.Value, lowFreq = s.LowFreqFactor!.Value, highFreq = s.HighFreqFactor!.Value;
            double wavelength = 2 * Math.PI / f;
            if (wavelength < context / highFreq) return (f, 1);
            if (wavelength > context / lowFreq) return (f / llamaFactor, 1);
            double smooth = (context / wavelength - lowFreq) / (highFreq - lowFreq);
            return ((1 - smooth) * f / llamaFactor + smooth * f, 1);
        }

        /// <summary>
        /// One head's x [b, t, hd] rotated at positions 0..t-1, position p as in a sequence of length lengths[p]: the first
        /// d dimensions as two halves, (x1, x2) → s (x1 cos − x2 sin, x2 cos + x1 sin), the rest unchanged.
        /// </summary>
        static Tensor Rope(Tensor x, LlamaConfig c, int[] lengths, int layer)
        {
            long t = x.shape[1], half = c.RotaryDim / 2;
            var (cos, sin) = (new double[t * half], new double[t * half]);
            for (long p = 0; p < t; p++)
                for (int i = 0; i < half; i++)
                {
                    var (f, scale) = Frequency(c, i, lengths[p], layer);
                    (cos[p * half + i], sin[p * half + i]) = (scale * Math.Cos(p * f), scale * Math.Sin(p * f));
                }
            Tensor co = tensor(cos, [t, half]), si = tensor(sin, [t, half]);
            Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half), rest = x.narrow(-1, 2 * half, x.shape[^1] - 2 * half);
            return cat([x1 * co - x2 * si, x2 * co + x1 * si, rest], -1);
        }

        /// <summary>Whether layer i rotates: SmolLM3's no_rope_layers says so per layer; the other families always do.</summary>
        static bool Rotates(LlamaConfig c, int layer) => c is not SmolLM3Config smol || smol.NoRopeLayers![layer] == 1;

        static Tensor Attention(Tensor x, DecoderAttention attention, LlamaConfig c, int layer, int[] lengths)
        {
            long b = x.shape[0], t = x.shape[1];
            int heads = c.NumAttentionHeads, kvHeads = c.KeyValueHeads, hd = c.HeadDim;
            Tensor q, k, v;
            AdaptableLinear output;
            RmsNorm? qNorm = null, kNorm = null;
            if (attention is Phi3Attention phi)
            {
                // Phi-3's fused projection: its output rows are the queries, then the keys, then the values.
                var qkv = Linear(x, phi.qkv_proj);
                (q, k, v, output) = (qkv.narrow(-1, 0, heads * hd), qkv.narrow(-1, heads * hd, kvHeads * hd), qkv.narrow(-1, (heads + kvHeads) * hd, kvHeads * hd), phi.o_proj);
            }
            else
            {
                var llama = (LlamaAttention)attention;
                (q, k, v, output, qNorm, kNorm) = (Linear(x, llama.q_proj), Linear(x, llama.k_proj), Linear(x, llama.v_proj), llama.o_proj, llama.q_norm, llama.k_norm);
            }
            // Query i sees key j when j ≤ i and, with a sliding window W, i − j < W.
            var hidden = new bool[t * t];
            for (int i = 0; i < t; i++)
                for (int j = 0; j < t; j++)
                    hidden[i * t + j] = j > i || (Window(c, layer) is { } w && i - j >= w);
            var masked = tensor(hidden, [t, t]);
            var outputs = new Tensor[heads];
            for (int h = 0; h < heads; h++)
            {
                int kv = h / (heads / kvHeads);
                Tensor qh = q.narrow(-1, h * hd, hd), kh = k.narrow(-1, kv * hd, hd), vh = v.narrow(-1, kv * hd, hd);   // [b, t, hd]
                if (qNorm is not null) (qh, kh) = (Norm(qh, qNorm, c), Norm(kh, kNorm!, c));
                if (Rotates(c, layer)) (qh, kh) = (Rope(qh, c, lengths, layer), Rope(kh, c, lengths, layer));
                // Gemma scales by query_pre_attn_scalar^-1/2 and Gemma 2 caps the scores at c · tanh(s / c).
                var scores = qh.matmul(kh.transpose(1, 2)) / Math.Sqrt(c is Gemma2Config g ? g.QueryPreAttnScalar : hd);   // [b, t, t]
                if (c is Gemma2Config { AttnLogitSoftcapping: { } cap }) scores = (scores / cap).tanh() * cap;
                outputs[h] = scores.masked_fill(masked, double.NegativeInfinity).softmax(-1).matmul(vh);              // [b, t, hd]
            }
            return Linear(cat(outputs, -1), output);
        }

        /// <summary>
        /// Qwen3 MoE's block token by token: p = softmax(W_gate x), the top-k experts by p, their p over their sum under
        /// norm_topk_prob, and Σ p_e · SwiGLU_e(x).
        /// </summary>
        public static Tensor Moe(Tensor x, Qwen3MoeSparseMoeBlock block, Qwen3MoeConfig c)
        {
            long hidden = x.shape[^1];
            var tokens = x.reshape(-1, hidden);
            var gate = F64(block.gate.weight);
            var outputs = new List<Tensor>();
            for (long n = 0; n < tokens.shape[0]; n++)
            {
                var token = tokens[n];                                                        // [hidden]
                double[] logits = gate.matmul(token).data<double>().ToArray();
                double max = logits.Max();
                double[] p = logits.Select(l => Math.Exp(l - max)).ToArray();
                double total = p.Sum();
                p = p.Select(v => v / total).ToArray();
                int[] top = Enumerable.Range(0, p.Length).OrderByDescending(e => p[e]).Take(c.NumExpertsPerTok).ToArray();
                double norm = c.NormTopkProb ? top.Sum(e => p[e]) : 1;
                var y = zeros(hidden, ScalarType.Float64);
                foreach (int e in top) y = y + p[e] / norm * Mlp(token.unsqueeze(0), block.experts[e], c).squeeze(0);
                outputs.Add(y);
            }
            return stack(outputs).view(x.shape);
        }

        /// <summary>SwiGLU, silu(g) = g σ(g), or Gemma's GeGLU with the tanh approximation of gelu.</summary>
        static Tensor Mlp(Tensor x, nn.Module<Tensor, Tensor> mlp, LlamaConfig c)
        {
            Tensor gate, up;
            AdaptableLinear down;
            if (mlp is Phi3Mlp fused)
            {
                var gateUp = Linear(x, fused.gate_up_proj);                                   // [gate; up]
                long ffn = gateUp.shape[^1] / 2;
                (gate, up, down) = (gateUp.narrow(-1, 0, ffn), gateUp.narrow(-1, ffn, ffn), fused.down_proj);
            }
            else
            {
                var llama = (LlamaMlp)mlp;
                (gate, up, down) = (Linear(x, llama.gate_proj), Linear(x, llama.up_proj), llama.down_proj);
            }
            var activated = c is Gemma2Config
                ? 0.5 * gate * (1 + (Math.Sqrt(2 / Math.PI) * (gate + 0.044715 * gate.pow(3))).tanh())
                : gate / (1 + (-gate).exp());
            return Linear(activated * up, down);
        }

        /// <summary>The logits with position p rotated as in a sequence of length <paramref name="lengths"/>[p].</summary>
        public static Tensor Model(Tensor ids, LlamaForCausalLM model, int[] lengths)
        {
            var c = model.Config;
            long b = ids.shape[0], t = ids.shape[1];
            var embeddings = F64(model.model.embed_tokens.weight!);
            var h = embeddings.index_select(0, ids.flatten()).view(b, t, -1);
            if (c is Gemma2Config) h = h * (double)(float)Math.Sqrt(c.HiddenSize);   // √hidden in the embedding's type (float32)
            for (int i = 0; i < model.model.layers.Count; i++)
            {
                var layer = model.model.layers[i];
                if (c is Gemma2Config)
                {
                    // Gemma: the attention's and the MLP's outputs are normed before the residual add.
                    h = h + Norm(Attention(Norm(h, layer.input_layernorm, c), layer.self_attn, c, i, lengths), layer.post_attention_layernorm, c);
                    h = h + Norm(Mlp(Norm(h, layer.pre_feedforward_layernorm!, c), layer.mlp, c), layer.post_feedforward_layernorm!, c);
                    continue;
                }
                h = h + Attention(Norm(h, layer.input_layernorm, c), layer.self_attn, c, i, lengths);
                var normed = Norm(h, layer.post_attention_layernorm, c);
                h = h + (layer.mlp is Qwen3MoeSparseMoeBlock moe ? Moe(normed, moe, (Qwen3MoeConfig)c) : Mlp(normed, layer.mlp, c));
            }
            // A tied head is the embedding matrix itself.
            var head = c.TieWordEmbeddings ? embeddings : F64(model.lm_head.weight);
            var logits = Norm(h, model.model.norm, c).matmul(head.t());
            return c is Gemma2Config { FinalLogitSoftcapping: { } cap } ? (logits / cap).tanh() * cap : logits;
        }
    }
}
