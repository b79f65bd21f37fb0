using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// Gemma 2 (transformers' modeling_gemma2.py): Llama's decoder with Gemma's changes, each an option of
/// <see cref="LlamaConfig"/>: embeddings times √hidden_size; RMSNorm scaling by 1 + weight in float32; four norms per layer
/// (the attention's and the MLP's outputs are normed before the residual add); a GeGLU MLP (gelu_pytorch_tanh); attention
/// scores scaled by query_pre_attn_scalar^-1/2 and soft-capped (c · tanh(s / c), attn_logit_softcapping); logits soft-capped
/// (final_logit_softcapping); local layers (even indices) attending to the latest sliding_window positions, global layers
/// (odd) to all; a tied head.
/// </summary>
public sealed class Gemma2ForCausalLM(Gemma2Config config) : LlamaForCausalLM(config);

/// <summary>The config of Gemma 2, and the keys Gemma 3's text model shares with it (transformers' Gemma2Config defaults).</summary>
public record Gemma2Config : LlamaConfig
{
    public Gemma2Config()
    {
        ModelType = "gemma2";
        Architectures = [nameof(Gemma2ForCausalLM)];
        // Gemma's defaults where Llama's differ; transformers ignores hidden_act here and reads hidden_activation.
        (HiddenAct, RmsNormEps, TieWordEmbeddings, MaxPositionEmbeddings, HeadDimension) = ("gelu_pytorch_tanh", 1e-6, true, 8192, 256);
    }

    [JsonPropertyName("hidden_activation")] public string HiddenActivation { get; init; } = "gelu_pytorch_tanh";
    [JsonPropertyName("query_pre_attn_scalar")] public double QueryPreAttnScalar { get; init; } = 256;
    // Written even when null: their defaults are not null, so a missing key would read back as the default.
    [JsonPropertyName("sliding_window"), JsonIgnore(Condition = JsonIgnoreCondition.Never)] public int? SlidingWindow { get; init; } = 4096;
    [JsonPropertyName("attn_logit_softcapping"), JsonIgnore(Condition = JsonIgnoreCondition.Never)] public double? AttnLogitSoftcapping { get; init; } = 50;
    [JsonPropertyName("final_logit_softcapping"), JsonIgnore(Condition = JsonIgnoreCondition.Never)] public double? FinalLogitSoftcapping { get; init; } = 30;
    /// <summary>sliding_attention or full_attention per layer (transformers ≥ 4.53 writes it); absent, the family's pattern.</summary>
    [JsonPropertyName("layer_types")] public string[]? LayerTypes { get; init; }

    /// <summary>Whether layer <paramref name="layer"/> is local (windowed): layer_types, else Gemma 2's even layers.</summary>
    public virtual bool IsSliding(int layer) => LayerTypes is { } types ? types[layer] == "sliding_attention" : layer % 2 == 0;

    public override int? LayerWindow(int layer) => IsSliding(layer) ? SlidingWindow : null;
    [JsonIgnore] public override double AttentionScale => 1 / Math.Sqrt(QueryPreAttnScalar);
    [JsonIgnore] public override double? AttentionSoftcap => AttnLogitSoftcapping;
    [JsonIgnore] public override double? LogitSoftcap => FinalLogitSoftcapping;
    [JsonIgnore] public override double EmbeddingScale => Math.Sqrt(HiddenSize);
    [JsonIgnore] public override double NormOffset => 1;
    [JsonIgnore] public override bool SandwichNorms => true;
    [JsonIgnore] public override string MlpActivation => HiddenActivation;
    [JsonIgnore] public override Type ModelClass => typeof(Gemma2ForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new Gemma2ForCausalLM(this);

    protected override string? ActivationProblem() => Activation(HiddenActivation) is null
        ? $"hidden_activation '{HiddenActivation}' is not supported (supported: {Activations})" : null;

    protected override IEnumerable<string> Problems()
    {
        foreach (string problem in base.Problems()) yield return problem;
        if (MlpBias) yield return $"mlp_bias true is not supported ({ModelType}'s MLP has no bias)";
        if (QueryPreAttnScalar <= 0) yield return $"query_pre_attn_scalar is {QueryPreAttnScalar}; it must be positive";
        if (AttnLogitSoftcapping is <= 0) yield return $"attn_logit_softcapping is {AttnLogitSoftcapping}; it must be positive or null";
        if (FinalLogitSoftcapping is <= 0) yield return $"final_logit_softcapping is {FinalLogitSoftcapping}; it must be positive or null";
        if (LayerTypes is { } types)
        {
            if (types.Length != NumHiddenLayers) yield return $"layer_types has {types.Length} entries for {NumHiddenLayers} layers";
            if (types.FirstOrDefault(t => t is not ("sliding_attention" or "full_attention")) is { } other)
                yield return $"layer_types entry '{other}' is not supported (supported: sliding_attention, full_attention)";
        }
        if (SlidingWindow is <= 0) yield return $"sliding_window is {SlidingWindow}; it must be positive or null";
    }
}
