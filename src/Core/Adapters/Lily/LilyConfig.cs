using System.Text.Json.Serialization;

namespace AdapterService.Core.Adapters;

/// <summary>Lily's options; the file is PEFT's Lily format (<c>peft_type: LILY</c>) plus our router options.</summary>
public sealed record LilyConfig : AdapterConfig
{
    public const string Type = "LILY";
    public override string PeftType { get; init; } = Type;
    /// <summary>d, the low dimension of each layer's projector LP.</summary>
    [JsonPropertyName("r")] public int Rank { get; init; } = 8;
    /// <summary>LPs per module type: always one per layer here (the paper's Lily), written for PEFT.</summary>
    [JsonPropertyName("num_A")] public int? NumA { get; init; }
    /// <summary>N_e, the HP experts shared by all layers of a module type.</summary>
    [JsonPropertyName("num_B")] public int NumExperts { get; init; } = 4;
    /// <summary>s, the scaling of the update.</summary>
    [JsonPropertyName("lily_scaling")] public double Scaling { get; init; } = 1.0;
    [JsonPropertyName("lily_dropout")] public double Dropout { get; init; }
    /// <summary>d per module name where it differs from r (e.g. a larger d for the FFN's layers).</summary>
    [JsonPropertyName("rank_pattern")] public Dictionary<string, int>? RankPattern { get; init; }
    /// <summary>"sequence" (each sequence its own router mean: the causal prefix mean for causal LMs) or "batch" (the paper's mean over batch and tokens; training only).</summary>
    [JsonPropertyName("router_mean")] public string RouterMean { get; init; } = "sequence";
    /// <summary>The paper's ablation without router: the experts are summed.</summary>
    [JsonPropertyName("monoscale")] public bool Monoscale { get; init; }

    public override string Method => "lily";

    public int RankOf(string path) =>
        RankPattern?.FirstOrDefault(p => path == p.Key || path.EndsWith("." + p.Key, StringComparison.Ordinal)).Value is > 0 and var d ? d : Rank;

    public override void Validate()
    {
        if (Rank is < 1 or > 1024) throw new ArgumentException("r must be between 1 and 1024");
        if (NumExperts is < 1 or > 64) throw new ArgumentException("num_B must be between 1 and 64");
        if (!double.IsFinite(Scaling)) throw new ArgumentException("lily_scaling must be a number");
        if (Dropout is < 0 or >= 1) throw new ArgumentException("lily_dropout must be in [0, 1)");
        if (RouterMean is not ("sequence" or "batch")) throw new ArgumentException("router_mean must be \"sequence\" or \"batch\"");
        if (RankPattern?.Values.Any(d => d is < 1 or > 1024) == true) throw new ArgumentException("rank_pattern values must be between 1 and 1024");
    }
}
