using System.Text.Json.Serialization;

namespace AdapterService.Core.Adapters;

/// <summary>MixLoRA's options (our own format: <c>peft_type: MIXLORA</c>); <c>target_modules</c> are the attention layers that get plain LoRA.</summary>
public sealed record MixLoraConfig : AdapterConfig
{
    public const string Type = "MIXLORA";
    public override string PeftType { get; init; } = Type;
    [JsonPropertyName("r")] public int Rank { get; init; } = 8;
    [JsonPropertyName("lora_alpha")] public double Alpha { get; init; } = 16;
    [JsonPropertyName("lora_dropout")] public double Dropout { get; init; }
    [JsonPropertyName("num_experts")] public int NumExperts { get; init; } = 8;
    [JsonPropertyName("top_k")] public int TopK { get; init; } = 2;
    [JsonPropertyName("router_aux_loss_coef")] public double AuxLossCoefficient { get; init; } = 0.01;
    [JsonPropertyName("router_init_range")] public double RouterInitRange { get; init; } = 0.02;

    public override string Method => "mixlora";
    [JsonIgnore] public double Scaling => Alpha / Rank;
    [JsonIgnore] public LoraConfig Lora => new() { Rank = Rank, Alpha = Alpha, Dropout = Dropout, TargetModules = TargetModules };

    public override void Validate()
    {
        if (Rank is < 1 or > 1024) throw new ArgumentException("r must be between 1 and 1024");
        if (!(Alpha > 0)) throw new ArgumentException("lora_alpha must be positive");
        if (Dropout is < 0 or >= 1) throw new ArgumentException("lora_dropout must be in [0, 1)");
        if (NumExperts is < 1 or > 64) throw new ArgumentException("num_experts must be between 1 and 64");
        if (TopK < 1 || TopK > NumExperts) throw new ArgumentException("top_k must be between 1 and num_experts");
        if (AuxLossCoefficient is < 0 or > 10) throw new ArgumentException("router_aux_loss_coef must be between 0 and 10");
    }
}
