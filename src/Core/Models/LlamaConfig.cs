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

    /// <summary>The keys this family does not read (written back as they came); <see cref="MathKeys"/> checks them.</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? OtherKeys { get; init; }

    [JsonIgnore] public int KeyValueHeads => NumKeyValueHeads ?? NumAttentionHeads;
    [JsonIgnore] public int HeadDim => HeadDimension ?? HiddenSize / NumAttentionHeads;
    [JsonIgnore] public double Theta => RopeParameters?.RopeTheta ?? RopeTheta;
    [JsonIgnore] public RopeScaling? Rope => RopeParameters ?? RopeScaling;

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
    /// <summary>
    /// The most positions a sequence may have: max_position_embeddings, or factor times it under dynamic scaling, which
    /// exists to run past the trained context (transformers sets no limit; factor is the extension it is configured for).
    /// </summary>
    [JsonIgnore] public int ContextLength => Rope is { Kind: "dynamic", Factor: { } factor } ? (int)Math.Min(int.MaxValue, factor * MaxPositionEmbeddings) : MaxPositionEmbeddings;

    /// <summary>A decoder layer's attention and feed-forward network (Llama's separate projections; Phi-3 fuses them).</summary>
    public virtual DecoderAttention CreateAttention(int layer) => new LlamaAttention(this, layer);
    public virtual nn.Module<Tensor, Tensor> CreateMlp() => new LlamaMlp(this);

    [JsonIgnore] public override Type ModelClass => typeof(LlamaForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new LlamaForCausalLM(this);

    public override IEnumerable<(string Path, long In, long Out)> LinearShapes() => LlamaForCausalLM.LinearShapes(this);

    public override IEnumerable<(string Path, long Size)> NormShapes() =>
        Enumerable.Range(0, NumHiddenLayers).SelectMany(i => new[]
            { ($"model.layers.{i}.input_layernorm", (long)HiddenSize), ($"model.layers.{i}.post_attention_layernorm", HiddenSize) }
            .Concat(QkNorm ? [($"model.layers.{i}.self_attn.q_norm", HeadDim), ($"model.layers.{i}.self_attn.k_norm", HeadDim)] : []))
            .Append(("model.norm", HiddenSize));

    /// <summary>
    /// Keys some Hugging Face decoder family reads that change the math, with the test of their neutral value: a family that
    /// does not implement one refuses any other value (unknown keys without a meaning for the math pass).
    /// </summary>
    static readonly Dictionary<string, Func<JsonElement, bool>> MathKeys = new(StringComparer.Ordinal)
    {
        ["partial_rotary_factor"] = e => Is(e, 1),
        ["sliding_window"] = e => e.ValueKind == JsonValueKind.Null,
        ["use_sliding_window"] = e => e.ValueKind is JsonValueKind.False or JsonValueKind.Null,
        ["layer_types"] = e => e.ValueKind == JsonValueKind.Array && e.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String && t.GetString() == "full_attention"),
        ["no_rope_layers"] = e => e.ValueKind == JsonValueKind.Array && e.EnumerateArray().All(t => Is(t, 1)),
        ["attn_logit_softcapping"] = e => e.ValueKind == JsonValueKind.Null,
        ["final_logit_softcapping"] = e => e.ValueKind == JsonValueKind.Null,
        ["num_experts"] = e => e.ValueKind == JsonValueKind.Null || Is(e, 0),
        ["num_local_experts"] = e => e.ValueKind == JsonValueKind.Null || Is(e, 0),
        ["use_qk_norm"] = e => e.ValueKind is JsonValueKind.False or JsonValueKind.Null,
    };

    static bool Is(JsonElement e, double value) => e.ValueKind == JsonValueKind.Number && e.TryGetDouble(out double d) && d == value;

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
        if (HiddenAct != "silu") yield return $"hidden_act '{HiddenAct}' is not supported ({ModelType} uses silu)";
        if (RmsNormEps <= 0) yield return $"rms_norm_eps is {RmsNormEps}; it must be positive";
        if (Theta <= 0) yield return $"rope_theta is {Theta}; it must be positive";
        foreach (var (key, value) in OtherKeys ?? [])
            if (MathKeys.TryGetValue(key, out var neutral) && !neutral(value))
                yield return $"{key} {value.GetRawText()} is not supported for model_type '{ModelType}'";
    }
}
