using System.Text.Json.Serialization;

namespace AdapterService.Core.Adapters;

/// <summary>RLRR's options (our own format: <c>peft_type: RLRR</c>).</summary>
public sealed record RlrrConfig : AdapterConfig
{
    public const string Type = "RLRR";
    public override string PeftType { get; init; } = Type;
    /// <summary>Rank of the rescaling S_left S_rightᵀ (1 in the paper's main method; the appendix's variant uses more).</summary>
    [JsonPropertyName("r")] public int Rank { get; init; } = 1;
    /// <summary>Also rescale and shift every norm layer's output (the paper adapts LayerNorm too, the SSF way).</summary>
    [JsonPropertyName("layer_norms")] public bool LayerNorms { get; init; } = true;

    public override string Method => "rlrr";

    public override void Validate()
    {
        if (Rank is < 1 or > 64) throw new ArgumentException("r must be between 1 and 64");
    }
}
