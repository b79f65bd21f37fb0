using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// Mistral (transformers' modeling_mistral.py): Llama's decoder where each query attends to the latest
/// <c>sliding_window</c> positions only (Mistral 7B v0.1: 4096; null, as in v0.2 on, means all of them).
/// </summary>
public sealed class MistralForCausalLM(MistralConfig config) : LlamaForCausalLM(config);

public sealed record MistralConfig : LlamaConfig
{
    public MistralConfig()
    {
        ModelType = "mistral";
        Architectures = [nameof(MistralForCausalLM)];
    }

    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; init; }

    [JsonIgnore] public override int? AttentionWindow => SlidingWindow;
    [JsonIgnore] public override Type ModelClass => typeof(MistralForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new MistralForCausalLM(this);

    protected override IEnumerable<string> Problems()
    {
        foreach (string problem in base.Problems()) yield return problem;
        if (SlidingWindow is <= 0) yield return $"sliding_window is {SlidingWindow}; it must be positive or null";
        if (AttentionBias) yield return "attention_bias true is not supported (Mistral's attention has no bias)";
        if (MlpBias) yield return "mlp_bias true is not supported (Mistral's MLP has no bias)";
    }
}
