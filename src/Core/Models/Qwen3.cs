using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// Qwen3 (transformers' modeling_qwen3.py): Llama's decoder with an RMSNorm over head_dim on each query and key head
/// before the rotation (<c>q_norm</c>, <c>k_norm</c>), and a head_dim that need not be hidden_size / num_attention_heads.
/// </summary>
public sealed class Qwen3ForCausalLM(Qwen3Config config) : LlamaForCausalLM(config);

public sealed record Qwen3Config : LlamaConfig
{
    public Qwen3Config()
    {
        ModelType = "qwen3";
        Architectures = [nameof(Qwen3ForCausalLM)];
    }

    [JsonPropertyName("use_sliding_window")] public bool UseSlidingWindow { get; init; }
    /// <summary>Read only with use_sliding_window, which is refused; kept so a saved config is the one imported.</summary>
    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; init; }

    [JsonIgnore] public override bool QkNorm => true;
    [JsonIgnore] public override Type ModelClass => typeof(Qwen3ForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new Qwen3ForCausalLM(this);

    protected override IEnumerable<string> Problems()
    {
        foreach (string problem in base.Problems()) yield return problem;
        if (UseSlidingWindow) yield return "use_sliding_window true is not supported (no released Qwen3 config turns it on)";
        if (MlpBias) yield return "mlp_bias true is not supported (Qwen3's MLP has no bias)";
    }
}
