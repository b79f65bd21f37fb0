using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// Qwen2 and Qwen2.5 (transformers' modeling_qwen2.py): Llama's decoder with a bias on the q, k and v projections (not on
/// o_proj), and tied embeddings in the small sizes. Sliding-window attention is off in every released config; on, it is refused.
/// </summary>
public sealed class Qwen2ForCausalLM(Qwen2Config config) : LlamaForCausalLM(config);

public sealed record Qwen2Config : LlamaConfig
{
    public Qwen2Config()
    {
        ModelType = "qwen2";
        Architectures = [nameof(Qwen2ForCausalLM)];
    }

    [JsonPropertyName("use_sliding_window")] public bool UseSlidingWindow { get; init; }
    /// <summary>Read only with use_sliding_window, which is refused; kept so a saved config is the one imported.</summary>
    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; init; }

    [JsonIgnore] public override bool QkvBias => true;
    [JsonIgnore] public override bool OutputBias => false;
    [JsonIgnore] public override Type ModelClass => typeof(Qwen2ForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new Qwen2ForCausalLM(this);

    protected override IEnumerable<string> Problems()
    {
        foreach (string problem in base.Problems()) yield return problem;
        if (UseSlidingWindow) yield return "use_sliding_window true is not supported (no released Qwen2 config turns it on)";
        if (AttentionBias) yield return "attention_bias true is not supported (Qwen2 has biases on q, k, v only)";
        if (MlpBias) yield return "mlp_bias true is not supported (Qwen2's MLP has no bias)";
    }
}
