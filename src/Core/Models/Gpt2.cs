using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>The Hugging Face <c>config.json</c> of a GPT-2 model (<c>model_type: gpt2</c>).</summary>
public sealed record Gpt2Config : ModelConfig
{
    public Gpt2Config()
    {
        ModelType = "gpt2";
        Architectures = [nameof(GPT2LMHeadModel)];
    }

    [JsonRequired, JsonPropertyName("vocab_size")] public int VocabSize { get; init; }
    [JsonRequired, JsonPropertyName("n_embd")] public int NEmbd { get; init; }
    [JsonRequired, JsonPropertyName("n_head")] public int NHead { get; init; }
    [JsonRequired, JsonPropertyName("n_layer")] public int NLayer { get; init; }
    [JsonRequired, JsonPropertyName("n_positions")] public int NPositions { get; init; }
    /// <summary>The feed-forward size; null means 4 · n_embd.</summary>
    [JsonPropertyName("n_inner")] public int? NInner { get; init; }
    [JsonPropertyName("layer_norm_epsilon")] public double LayerNormEpsilon { get; init; } = 1e-5;
    [JsonPropertyName("activation_function")] public string ActivationFunction { get; init; } = "gelu_new";
    [JsonPropertyName("scale_attn_weights")] public bool ScaleAttnWeights { get; init; } = true;
    [JsonPropertyName("scale_attn_by_inverse_layer_idx")] public bool ScaleAttnByInverseLayerIdx { get; init; }
    [JsonPropertyName("add_cross_attention")] public bool AddCrossAttention { get; init; }
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; init; } = true;
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; init; }
    [JsonPropertyName("eos_token_id"), JsonConverter(typeof(TokenIdsConverter))] public int[]? EosTokenIds { get; init; }
    [JsonIgnore] public int? EosTokenId { get => EosTokenIds is [var first, ..] ? first : null; init => EosTokenIds = value is { } id ? [id] : null; }

    [JsonIgnore] public int InnerSize => NInner ?? 4 * NEmbd;
    [JsonIgnore] public int HeadDim => NEmbd / NHead;
    [JsonIgnore] public override Type ModelClass => typeof(GPT2LMHeadModel);

    public override nn.Module<Tensor, Tensor> CreateModel() => new GPT2LMHeadModel(this);

    /// <summary>Keys of GPT-2's relatives (GPT-J, GPT-Neo, GPT-NeoX, BigCode, BLOOM) that change the math, refused unless neutral.</summary>
    protected override IReadOnlyDictionary<string, Func<JsonElement, bool>> MathKeys => Gpt2MathKeys;

    static readonly IReadOnlyDictionary<string, Func<JsonElement, bool>> Gpt2MathKeys = new Dictionary<string, Func<JsonElement, bool>>(CommonMathKeys, StringComparer.Ordinal)
    {
        ["rotary_dim"] = IsNull,
        ["rotary_pct"] = IsNull,
        ["position_embedding_type"] = e => IsNull(e) || (e.ValueKind == JsonValueKind.String && e.GetString() == "absolute"),
        ["alibi"] = IsFalse,
        ["multi_query"] = IsFalse,
        ["use_parallel_residual"] = IsFalse,
        ["parallel_attn"] = IsFalse,
        ["apply_residual_connection_post_layernorm"] = IsFalse,
        ["window_size"] = IsNull,
        ["attention_layers"] = e => IsNull(e) || (e.ValueKind == JsonValueKind.Array && e.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String && t.GetString() == "global")),
    };

    public override IEnumerable<(string Path, long In, long Out)> LinearShapes()
    {
        for (int i = 0; i < NLayer; i++)
        {
            yield return ($"transformer.h.{i}.attn.c_attn", NEmbd, 3 * NEmbd);
            yield return ($"transformer.h.{i}.attn.c_proj", NEmbd, NEmbd);
            yield return ($"transformer.h.{i}.mlp.c_fc", NEmbd, InnerSize);
            yield return ($"transformer.h.{i}.mlp.c_proj", InnerSize, NEmbd);
        }
        yield return ("lm_head", NEmbd, VocabSize);
    }

    public override IEnumerable<(string Path, long Size)> NormShapes() =>
        Enumerable.Range(0, NLayer).SelectMany(i => new[] { ($"transformer.h.{i}.ln_1", (long)NEmbd), ($"transformer.h.{i}.ln_2", NEmbd) })
            .Append(("transformer.ln_f", NEmbd));

    protected override IEnumerable<string> Problems()
    {
        foreach (var (key, value) in new[] { ("vocab_size", VocabSize), ("n_embd", NEmbd), ("n_head", NHead), ("n_layer", NLayer), ("n_positions", NPositions) })
            if (value <= 0) yield return $"{key} is {value}; it must be positive";
        if (NHead > 0 && NEmbd % NHead != 0) yield return $"n_head ({NHead}) does not divide n_embd ({NEmbd})";
        if (NInner is <= 0) yield return $"n_inner is {NInner}; it must be positive or null";
        if (Activation(ActivationFunction) is null) yield return $"activation_function '{ActivationFunction}' is not supported (supported: {Activations})";
        if (AddCrossAttention) yield return "add_cross_attention is true; only decoder-only GPT-2 is supported";
        if (LayerNormEpsilon <= 0) yield return $"layer_norm_epsilon is {LayerNormEpsilon}; it must be positive";
    }
}

/// <summary>
/// GPT-2 (learned positions, pre-LayerNorm blocks, GELU MLP, causal attention) with the Hugging Face parameter names.
/// Hugging Face's Conv1D keeps weights as [in, out]; here every projection is an <see cref="AdaptableLinear"/> [out, in]
/// so adapters work unchanged, and <see cref="ModelFolder"/> transposes them on load and save.
/// </summary>
public sealed class GPT2LMHeadModel : CausalLanguageModel, IHuggingFaceModel
{
    public readonly GPT2Model transformer;
    public readonly AdaptableLinear lm_head;
    public Gpt2Config Config { get; }

    public GPT2LMHeadModel(Gpt2Config config) : base(nameof(GPT2LMHeadModel))
    {
        Config = config;
        transformer = new GPT2Model(config);
        lm_head = config.TieWordEmbeddings ? new AdaptableLinear(transformer.wte.weight!) : new AdaptableLinear(config.NEmbd, config.VocabSize);
        RegisterComponents();
    }

    public override int VocabSize => Config.VocabSize;
    public override int ContextLength => Config.NPositions;
    public override int? BosTokenId => Config.BosTokenId;
    public override IReadOnlyList<int> EosTokenIds => Config.EosTokenIds ?? [];
    public override int NumLayers => Config.NLayer;
    public override int KeyValueHeads => Config.NHead;
    public override int HeadDim => Config.HeadDim;

    public override Tensor Forward(Tensor inputIds, Tensor positions, Tensor? mask, IKvCache? cache) =>
        lm_head.forward(transformer.Forward(inputIds, positions, mask, cache));                   // [b, seq, vocab]

    public override (Tensor Input, IReadOnlyList<Func<Tensor, Tensor>> Blocks, Func<Tensor, Tensor> Head) Chain(Tensor inputIds, Tensor positions, Tensor? mask)
    {
        var blocks = transformer.h.Select(block => (Func<Tensor, Tensor>)(x => block.Forward(x, mask, null))).ToList();
        return (transformer.wte.forward(inputIds) + transformer.wpe.forward(positions), blocks,   // [b, seq, hidden]
            x => lm_head.forward(transformer.ln_f.forward(x)));
    }

    ModelConfig IHuggingFaceModel.ModelConfig => Config;

    /// <summary>Hugging Face keys and layouts: Conv1D weights [in, out], and no lm_head when it is tied to wte.</summary>
    public IEnumerable<CheckpointTensor> CheckpointTensors() => named_parameters()
        .Where(p => !(Config.TieWordEmbeddings && p.name == "lm_head.weight"))
        .Select(p => new CheckpointTensor(p.name, p.parameter, Transposed: IsConv1D(p.name)));

    /// <summary>
    /// Checkpoints of <c>GPT2Model</c> (such as the original gpt2 upload) have no <c>transformer.</c> prefix and may hold
    /// the causal-mask buffers <c>attn.bias</c>/<c>attn.masked_bias</c>, which carry no weights.
    /// </summary>
    public string? CanonicalKey(string key)
    {
        if (key.EndsWith(".attn.bias", StringComparison.Ordinal) || key.EndsWith(".attn.masked_bias", StringComparison.Ordinal)) return null;
        if (key == "lm_head.weight") return Config.TieWordEmbeddings ? null : key;
        return key.StartsWith("transformer.", StringComparison.Ordinal) ? key : "transformer." + key;
    }

    static bool IsConv1D(string name) =>
        name.EndsWith(".c_attn.weight", StringComparison.Ordinal) || name.EndsWith(".c_proj.weight", StringComparison.Ordinal)
        || name.EndsWith(".c_fc.weight", StringComparison.Ordinal);
}

public sealed class GPT2Model : nn.Module<Tensor, Tensor>
{
    public readonly EmbeddingTable wte, wpe;   // kept in the base's precision, return float32 (BasePrecision)
    public readonly ModuleList<GPT2Block> h;
    public readonly AdaptableLayerNorm ln_f;

    public GPT2Model(Gpt2Config config) : base(nameof(GPT2Model))
    {
        wte = new EmbeddingTable(config.VocabSize, config.NEmbd);
        wpe = new EmbeddingTable(config.NPositions, config.NEmbd);
        h = new ModuleList<GPT2Block>(Enumerable.Range(0, config.NLayer).Select(i => new GPT2Block(config, i)).ToArray());
        ln_f = new AdaptableLayerNorm(config.NEmbd, config.LayerNormEpsilon);
        RegisterComponents();
    }

    public override Tensor forward(Tensor inputIds) => throw new NotSupportedException("call Forward with positions");

    public Tensor Forward(Tensor inputIds, Tensor positions, Tensor? mask, IKvCache? cache)
    {
        var x = wte.forward(inputIds) + wpe.forward(positions);                    // [b, seq, hidden]
        for (int i = 0; i < h.Count; i++)
            x = h[i].Forward(x, mask, cache);                                       // [b, seq, hidden]
        return ln_f.forward(x);                                                     // [b, seq, hidden]
    }
}

public sealed class GPT2Block : nn.Module<Tensor, Tensor>
{
    public readonly AdaptableLayerNorm ln_1;
    public readonly GPT2Attention attn;
    public readonly AdaptableLayerNorm ln_2;
    public readonly GPT2MLP mlp;

    public GPT2Block(Gpt2Config config, int index) : base(nameof(GPT2Block))
    {
        ln_1 = new AdaptableLayerNorm(config.NEmbd, config.LayerNormEpsilon);
        attn = new GPT2Attention(config, index);
        ln_2 = new AdaptableLayerNorm(config.NEmbd, config.LayerNormEpsilon);
        mlp = new GPT2MLP(config);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("call Forward with a mask and cache");

    public Tensor Forward(Tensor x, Tensor? mask, IKvCache? cache)
    {
        var h = x + attn.Forward(ln_1.forward(x), mask, cache);                    // [b, seq, hidden]
        return h + mlp.forward(ln_2.forward(h));                                    // [b, seq, hidden]
    }
}

public sealed class GPT2Attention : nn.Module<Tensor, Tensor>
{
    public readonly AdaptableLinear c_attn, c_proj;
    readonly int heads, headDim, layerIndex;
    /// <summary>What q is multiplied by so that attention's built-in 1/√head_dim becomes the scaling the config asks for.</summary>
    readonly double queryScale;

    public GPT2Attention(Gpt2Config config, int layerIndex) : base(nameof(GPT2Attention))
    {
        (heads, headDim, this.layerIndex) = (config.NHead, config.HeadDim, layerIndex);
        c_attn = new AdaptableLinear(config.NEmbd, 3 * config.NEmbd, hasBias: true);
        c_proj = new AdaptableLinear(config.NEmbd, config.NEmbd, hasBias: true);
        queryScale = (config.ScaleAttnWeights ? 1 : Math.Sqrt(headDim)) / (config.ScaleAttnByInverseLayerIdx ? layerIndex + 1 : 1);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("call Forward with a mask and cache");

    public Tensor Forward(Tensor x, Tensor? mask, IKvCache? cache)
    {
        long b = x.shape[0], t = x.shape[1], hidden = heads * headDim;
        var qkv = c_attn.forward(x);                                                // [b, t, 3·hidden]
        var q = qkv.narrow(-1, 0, hidden).view(b, t, heads, headDim).transpose(1, 2);          // [b, heads, t, hd]
        var k = qkv.narrow(-1, hidden, hidden).view(b, t, heads, headDim).transpose(1, 2);     // [b, heads, t, hd]
        var v = qkv.narrow(-1, 2 * hidden, hidden).view(b, t, heads, headDim).transpose(1, 2); // [b, heads, t, hd]
        if (queryScale != 1) q = q * queryScale;
        if (cache is not null) (k, v) = cache.Append(layerIndex, k, v);            // [b, heads, past+t, hd]
        var y = nn.functional.scaled_dot_product_attention(q, k, v, mask);          // [b, heads, t, hd]
        return c_proj.forward(y.transpose(1, 2).reshape(b, t, hidden));            // [b, t, hidden]
    }
}

public sealed class GPT2MLP : nn.Module<Tensor, Tensor>, IFeedForward
{
    public readonly AdaptableLinear c_fc, c_proj;
    readonly Func<Tensor, Tensor> act;

    public IFeedForwardAdapter? Adapter { get; set; }
    public IReadOnlyList<(string Name, AdaptableLinear Layer)> Projections => [("c_fc", c_fc), ("c_proj", c_proj)];

    public Tensor Compute(Tensor x, Func<string, AdaptableLinear, Tensor, Tensor> project) =>
        project("c_proj", c_proj, act(project("c_fc", c_fc, x)));

    public GPT2MLP(Gpt2Config config) : base(nameof(GPT2MLP))
    {
        c_fc = new AdaptableLinear(config.NEmbd, config.InnerSize, hasBias: true);
        c_proj = new AdaptableLinear(config.InnerSize, config.NEmbd, hasBias: true);
        act = ModelConfig.Activation(config.ActivationFunction)
              ?? throw new ArgumentException($"activation_function '{config.ActivationFunction}' is not supported");
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => Adapter?.Forward(x, this) ?? c_proj.forward(act(c_fc.forward(x)));   // [b, t, hidden]
}
