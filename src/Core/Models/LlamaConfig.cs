using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// The Hugging Face <c>config.json</c> of a Llama-family model (the fields this service reads and writes). The families
/// that share Llama's decoder (Qwen2, Qwen3, Mistral) derive from it and switch its options on.
/// </summary>
public record LlamaConfig : ModelConfig
{
    public LlamaConfig()
    {
        ModelType = "llama";
        Architectures = [nameof(LlamaForCausalLM)];
    }

    [JsonRequired, JsonPropertyName("vocab_size")] public int VocabSize { get; init; }
    [JsonRequired, JsonPropertyName("hidden_size")] public int HiddenSize { get; init; }
    [JsonRequired, JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; }
    [JsonRequired, JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; init; }
    [JsonRequired, JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; init; }
    [JsonPropertyName("num_key_value_heads")] public int? NumKeyValueHeads { get; init; }
    [JsonPropertyName("head_dim")] public int? HeadDimension { get; init; }
    [JsonPropertyName("max_position_embeddings")] public int MaxPositionEmbeddings { get; init; } = 2048;
    [JsonPropertyName("rms_norm_eps")] public double RmsNormEps { get; init; } = 1e-5;
    [JsonPropertyName("rope_theta")] public double RopeTheta { get; init; } = 10000;
    [JsonPropertyName("rope_scaling")] public RopeScaling? RopeScaling { get; init; }
    /// <summary>transformers 5.x's spelling: rope_scaling's keys and rope_theta in one object.</summary>
    [JsonPropertyName("rope_parameters")] public RopeScaling? RopeParameters { get; init; }
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; init; } = "silu";
    [JsonPropertyName("attention_bias")] public bool AttentionBias { get; init; }
    [JsonPropertyName("mlp_bias")] public bool MlpBias { get; init; }
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; init; }
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; init; }
    [JsonPropertyName("eos_token_id"), JsonConverter(typeof(TokenIdsConverter))] public int[]? EosTokenIds { get; init; }
    [JsonIgnore] public int? EosTokenId { get => EosTokenIds is [var first, ..] ? first : null; init => EosTokenIds = value is { } id ? [id] : null; }

    /// <summary>The keys this family does not read (written back as they came); <see cref="MathKeys"/> lists those refused unless neutral.</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? OtherKeys { get; init; }

    [JsonIgnore] public int KeyValueHeads => NumKeyValueHeads ?? NumAttentionHeads;
    [JsonIgnore] public int HeadDim => HeadDimension ?? HiddenSize / NumAttentionHeads;
    [JsonIgnore] public double Theta => RopeParameters?.RopeTheta ?? RopeTheta;
    [JsonIgnore] public virtual RopeScaling? Rope => RopeParameters ?? RopeScaling;

    // The decoder's options, fixed per family: Llama's attention_bias puts a bias on q, k, v and o; Qwen2 on q, k, v only.
    [JsonIgnore] public virtual bool QkvBias => AttentionBias;
    [JsonIgnore] public virtual bool OutputBias => AttentionBias;
    /// <summary>Qwen3's RMSNorm over each query and key head before the rotation.</summary>
    [JsonIgnore] public virtual bool QkNorm => false;
    /// <summary>How many of the latest positions (the query's own included) each query attends to; null for all.</summary>
    [JsonIgnore] public virtual int? AttentionWindow => null;
    /// <summary>How many leading dimensions of each head rotate (Phi-3's partial_rotary_factor makes it fewer than head_dim).</summary>
    [JsonIgnore] public virtual int RotaryDim => HeadDim;
    /// <summary>Whether layer <paramref name="layer"/> rotates queries and keys (SmolLM3's NoPE layers do not).</summary>
    public virtual bool UsesRope(int layer) => true;
    /// <summary>What the rope types read besides rope_scaling.</summary>
    [JsonIgnore] public virtual RopeShape RopeShape => new(RotaryDim, Theta, MaxPositionEmbeddings);
    /// <summary>Layer <paramref name="layer"/>'s window (Gemma alternates windowed local layers with global ones).</summary>
    public virtual int? LayerWindow(int layer) => AttentionWindow;
    /// <summary>Layer <paramref name="layer"/>'s rotary shape and scaling (Gemma 3's local layers have their own base, unscaled).</summary>
    public virtual (RopeShape Shape, RopeScaling? Scaling) LayerRope(int layer) => (RopeShape, Rope);
    /// <summary>What attention scores q·k are multiplied by (Gemma: query_pre_attn_scalar^-1/2).</summary>
    [JsonIgnore] public virtual double AttentionScale => 1 / Math.Sqrt(HeadDim);
    /// <summary>Gemma 2's cap c on attention scores (c · tanh(s / c)); null for none.</summary>
    [JsonIgnore] public virtual double? AttentionSoftcap => null;
    /// <summary>Gemma 2's cap on the output logits; null for none.</summary>
    [JsonIgnore] public virtual double? LogitSoftcap => null;
    /// <summary>What token embeddings are multiplied by (Gemma: √hidden_size).</summary>
    [JsonIgnore] public virtual double EmbeddingScale => 1;
    /// <summary>Gemma's RMSNorm scales by 1 + weight: the offset (0 elsewhere).</summary>
    [JsonIgnore] public virtual double NormOffset => 0;
    /// <summary>Gemma's four norms per layer: attention and MLP outputs are normed too (post_attention_layernorm, post_feedforward_layernorm).</summary>
    [JsonIgnore] public virtual bool SandwichNorms => false;
    /// <summary>The MLP's gate activation, by its Hugging Face name.</summary>
    [JsonIgnore] public virtual string MlpActivation => HiddenAct;
    /// <summary>
    /// The most positions a sequence may have: max_position_embeddings, or factor times it under dynamic scaling, which
    /// exists to run past the trained context (transformers sets no limit; factor is the extension it is configured for).
    /// </summary>
    [JsonIgnore] public int ContextLength => Rope is { Kind: "dynamic", Factor: { } factor } ? (int)Math.Min(int.MaxValue, factor * MaxPositionEmbeddings) : MaxPositionEmbeddings;

    /// <summary>A decoder layer's attention and feed-forward network (Llama's separate projections; Phi-3 fuses them).</summary>
    public virtual DecoderAttention CreateAttention(int layer) => new LlamaAttention(this, layer);
    public virtual nn.Module<Tensor, Tensor> CreateMlp() => new LlamaMlp(this);
    /// <summary>Layer <paramref name="layer"/>'s feed-forward network, where it differs by layer (Qwen3 MoE's dense and sparse layers).</summary>
    public virtual nn.Module<Tensor, Tensor> CreateMlp(int layer) => CreateMlp();

    [JsonIgnore] public override Type ModelClass => typeof(LlamaForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new LlamaForCausalLM(this);

    public override IEnumerable<(string Path, long In, long Out)> LinearShapes() => LlamaForCausalLM.LinearShapes(this);

    public override IEnumerable<(string Path, long Size)> NormShapes() =>
        Enumerable.Range(0, NumHiddenLayers).SelectMany(i => new[]
            { ($"model.layers.{i}.input_layernorm", (long)HiddenSize), ($"model.layers.{i}.post_attention_layernorm", HiddenSize) }
            .Concat(SandwichNorms ? [($"model.layers.{i}.pre_feedforward_layernorm", HiddenSize), ($"model.layers.{i}.post_feedforward_layernorm", HiddenSize)] : [])
            .Concat(QkNorm ? [($"model.layers.{i}.self_attn.q_norm", HeadDim), ($"model.layers.{i}.self_attn.k_norm", HeadDim)] : []))
            .Append(("model.norm", HiddenSize));

    /// <summary>
    /// Keys other Hugging Face decoder families read that change the math, each with its neutral value: on a family of this
    /// decoder that does not implement one (Qwen2 implements <c>use_sliding_window</c>, Mistral <c>sliding_window</c>), any
    /// other value is refused (<see cref="ModelConfig.MathKeys"/>). Families that implement one declare it as a property.
    /// </summary>
    protected override IReadOnlyDictionary<string, Func<JsonElement, bool>> MathKeys => DecoderMathKeys;

    static readonly IReadOnlyDictionary<string, Func<JsonElement, bool>> DecoderMathKeys = new Dictionary<string, Func<JsonElement, bool>>(CommonMathKeys, StringComparer.Ordinal)
    {
        // Rotation of part of each head only (Phi, StableLM, GPT-NeoX's rotary_pct).
        ["partial_rotary_factor"] = e => IsNull(e) || Is(e, 1),
        ["rotary_pct"] = e => IsNull(e) || Is(e, 1),
        // Local attention: Mistral's and Qwen's window, Gemma's and Cohere's interleaving, Llama 4's chunks.
        ["sliding_window"] = IsNull,
        ["use_sliding_window"] = IsFalse,
        ["layer_types"] = e => IsNull(e) || (e.ValueKind == JsonValueKind.Array && e.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String && t.GetString() == "full_attention")),
        ["sliding_window_pattern"] = IsNull,
        ["interleaved_sliding_window"] = IsNull,
        ["attention_chunk_size"] = IsNull,
        ["rope_local_base_freq"] = IsNull,
        // SmolLM3's layers without rotary embeddings (1 = with).
        ["no_rope_layers"] = e => IsNull(e) || (e.ValueKind == JsonValueKind.Array && e.EnumerateArray().All(t => Is(t, 1))),
        // Gemma 2's soft-capping and attention scale.
        ["attn_logit_softcapping"] = IsNull,
        ["final_logit_softcapping"] = IsNull,
        ["query_pre_attn_scalar"] = IsNull,
        // Gemma's name for the activation.
        ["hidden_activation"] = e => IsNull(e) || (e.ValueKind == JsonValueKind.String && e.GetString() is "silu" or "swish"),
        // Norms over q and k (Llama 4, StableLM, OLMo's clipping), parallel blocks (GPT-NeoX, Falcon).
        ["use_qk_norm"] = IsFalse,
        // EmbeddingGemma's bidirectional attention (transformers' Gemma3TextConfig).
        ["use_bidirectional_attention"] = IsFalse,
        ["qk_layernorm"] = IsFalse,
        ["clip_qkv"] = IsNull,
        ["use_parallel_residual"] = IsFalse,
        ["parallel_attn"] = IsFalse,
        // Granite's and Cohere's multipliers.
        ["embedding_multiplier"] = e => IsNull(e) || Is(e, 1),
        ["residual_multiplier"] = e => IsNull(e) || Is(e, 1),
        ["attention_multiplier"] = IsNull,
        ["logits_scaling"] = e => IsNull(e) || Is(e, 1),
        ["logit_scale"] = e => IsNull(e) || Is(e, 1),
        // Qwen2-VL's multimodal rotary, Qwen-MoE's dense layers list.
        ["use_mrope"] = IsFalse,
        ["mlp_only_layers"] = IsEmpty,
    };

    /// <summary>What is wrong with the MLP activation the config names, if anything (Llama's families use silu only).</summary>
    protected virtual string? ActivationProblem() => HiddenAct == "silu" ? null : $"hidden_act '{HiddenAct}' is not supported ({ModelType} uses silu)";

    protected override IEnumerable<string> Problems()
    {
        foreach (var (key, value) in new[] { ("vocab_size", VocabSize), ("hidden_size", HiddenSize), ("intermediate_size", IntermediateSize),
                     ("num_hidden_layers", NumHiddenLayers), ("num_attention_heads", NumAttentionHeads), ("max_position_embeddings", MaxPositionEmbeddings) })
            if (value <= 0) yield return $"{key} is {value}; it must be positive";
        if (KeyValueHeads <= 0 || (NumAttentionHeads > 0 && NumAttentionHeads % KeyValueHeads != 0))
            yield return $"num_key_value_heads ({KeyValueHeads}) does not divide num_attention_heads ({NumAttentionHeads})";
        if (HeadDimension is null && NumAttentionHeads > 0 && HiddenSize % NumAttentionHeads != 0)
            yield return $"num_attention_heads ({NumAttentionHeads}) does not divide hidden_size ({HiddenSize}) and head_dim is not given";
        if (NumAttentionHeads > 0 && (HeadDim <= 0 || HeadDim % 2 != 0)) yield return $"head_dim {HeadDim} must be positive and even (rotary pairs)";
        if (RopeScaling is not null && RopeParameters is not null && !RopeScaling.SameAs(RopeParameters with { RopeTheta = RopeScaling.RopeTheta }))
            yield return "rope_scaling and rope_parameters disagree; write one";
        if (Rope is { } scaling)
            foreach (string problem in scaling.Problems(RopeParameters is null ? "rope_scaling" : "rope_parameters", this)) yield return problem;
        if (ActivationProblem() is { } activation) yield return activation;
        if (RmsNormEps <= 0) yield return $"rms_norm_eps is {RmsNormEps}; it must be positive";
        if (Theta <= 0) yield return $"rope_theta is {Theta}; it must be positive";
    }
}
