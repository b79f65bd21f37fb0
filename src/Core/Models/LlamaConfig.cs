using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>The Hugging Face <c>config.json</c> of a Llama-family model (the fields this service reads and writes).</summary>
public sealed record LlamaConfig : ModelConfig
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
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; init; } = "silu";
    [JsonPropertyName("attention_bias")] public bool AttentionBias { get; init; }
    [JsonPropertyName("mlp_bias")] public bool MlpBias { get; init; }
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; init; }
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; init; }
    [JsonPropertyName("eos_token_id"), JsonConverter(typeof(TokenIdsConverter))] public int[]? EosTokenIds { get; init; }
    [JsonIgnore] public int? EosTokenId { get => EosTokenIds is [var first, ..] ? first : null; init => EosTokenIds = value is { } id ? [id] : null; }

    [JsonIgnore] public int KeyValueHeads => NumKeyValueHeads ?? NumAttentionHeads;
    [JsonIgnore] public int HeadDim => HiddenSize / NumAttentionHeads;
    [JsonIgnore] public override Type ModelClass => typeof(LlamaForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new LlamaForCausalLM(this);

    public override IEnumerable<(string Path, long In, long Out)> LinearShapes() => LlamaForCausalLM.LinearShapes(this);

    public override IEnumerable<(string Path, long Size)> NormShapes() =>
        Enumerable.Range(0, NumHiddenLayers).SelectMany(i => new[]
            { ($"model.layers.{i}.input_layernorm", (long)HiddenSize), ($"model.layers.{i}.post_attention_layernorm", HiddenSize) })
            .Append(("model.norm", HiddenSize));

    protected override IEnumerable<string> Problems()
    {
        foreach (var (key, value) in new[] { ("vocab_size", VocabSize), ("hidden_size", HiddenSize), ("intermediate_size", IntermediateSize),
                     ("num_hidden_layers", NumHiddenLayers), ("num_attention_heads", NumAttentionHeads), ("max_position_embeddings", MaxPositionEmbeddings) })
            if (value <= 0) yield return $"{key} is {value}; it must be positive";
        if (NumAttentionHeads > 0 && HiddenSize % NumAttentionHeads != 0)
            yield return $"num_attention_heads ({NumAttentionHeads}) does not divide hidden_size ({HiddenSize})";
        if (KeyValueHeads <= 0 || (NumAttentionHeads > 0 && NumAttentionHeads % KeyValueHeads != 0))
            yield return $"num_key_value_heads ({KeyValueHeads}) does not divide num_attention_heads ({NumAttentionHeads})";
        if (HeadDimension is { } hd && NumAttentionHeads > 0 && hd != HiddenSize / NumAttentionHeads)
            yield return $"head_dim {hd} differs from hidden_size / num_attention_heads ({HiddenSize / Math.Max(NumAttentionHeads, 1)}), which this service does not support";
        if (RopeScaling is { } scaling)
            foreach (string problem in scaling.Problems()) yield return problem;
        if (HiddenAct != "silu") yield return $"hidden_act '{HiddenAct}' is not supported (Llama uses silu)";
        if (AttentionBias || MlpBias) yield return "attention_bias and mlp_bias are not supported";
        if (RmsNormEps <= 0) yield return $"rms_norm_eps is {RmsNormEps}; it must be positive";
        if (RopeTheta <= 0) yield return $"rope_theta is {RopeTheta}; it must be positive";
    }
}

/// <summary>
/// <c>rope_scaling</c> of a Llama config. Only Llama 3.1's scheme (<c>rope_type: llama3</c>, used by Llama 3.1–3.3) and
/// <c>default</c> are implemented; others (linear, dynamic, yarn, ...) are refused rather than silently ignored.
/// </summary>
public sealed record RopeScaling
{
    [JsonPropertyName("rope_type")] public string? RopeType { get; init; }
    /// <summary>The key older configs use for rope_type.</summary>
    [JsonPropertyName("type")] public string? Type { get; init; }
    [JsonPropertyName("factor")] public double? Factor { get; init; }
    [JsonPropertyName("low_freq_factor")] public double? LowFreqFactor { get; init; }
    [JsonPropertyName("high_freq_factor")] public double? HighFreqFactor { get; init; }
    [JsonPropertyName("original_max_position_embeddings")] public int? OriginalMaxPositionEmbeddings { get; init; }

    [JsonIgnore] public string Kind => RopeType ?? Type ?? "default";

    internal IEnumerable<string> Problems()
    {
        if (Kind == "default") yield break;
        if (Kind != "llama3")
        {
            yield return $"rope_scaling rope_type '{Kind}' is not supported (supported: llama3, default)";
            yield break;
        }
        if (Factor is not > 0) yield return "rope_scaling.factor must be a positive number";
        if (OriginalMaxPositionEmbeddings is not > 0) yield return "rope_scaling.original_max_position_embeddings must be a positive integer";
        if (LowFreqFactor is not > 0 || HighFreqFactor is not { } high || high <= LowFreqFactor)
            yield return "rope_scaling needs low_freq_factor > 0 and high_freq_factor > low_freq_factor";
    }
}
