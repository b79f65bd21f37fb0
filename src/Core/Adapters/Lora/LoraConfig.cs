using System.Text.Json.Serialization;

namespace AdapterService.Core.Adapters;

/// <summary>PEFT's <c>adapter_config.json</c> for LoRA (and DoRA, which PEFT writes as LoRA with <c>use_dora</c>).</summary>
public sealed record LoraConfig : AdapterConfig
{
    public const string Type = "LORA";
    public override string PeftType { get; init; } = Type;
    [JsonPropertyName("r")] public int Rank { get; init; } = 8;
    [JsonPropertyName("lora_alpha")] public double Alpha { get; init; } = 16;
    [JsonPropertyName("lora_dropout")] public double Dropout { get; init; }
    [JsonPropertyName("use_rslora")] public bool UseRsLora { get; init; }
    /// <summary>Weight-decomposed LoRA (DoRA): a trained magnitude per output feature times the normalised adapted weight.</summary>
    [JsonPropertyName("use_dora")] public bool UseDora { get; init; }
    [JsonPropertyName("bias")] public string Bias { get; init; } = "none";
    [JsonPropertyName("fan_in_fan_out")] public bool FanInFanOut { get; init; }

    public override string Method => UseDora ? "dora" : "lora";

    /// <summary>alpha / r, or alpha / sqrt(r) with rsLoRA.</summary>
    [JsonIgnore] public double Scaling => UseRsLora ? Alpha / Math.Sqrt(Rank) : Alpha / Rank;

    public override void Validate()
    {
        if (Rank is < 1 or > 1024) throw new ArgumentException("r must be between 1 and 1024");
        if (!(Alpha > 0)) throw new ArgumentException("lora_alpha must be positive");
        if (Dropout is < 0 or >= 1) throw new ArgumentException("lora_dropout must be in [0, 1)");
    }
}
