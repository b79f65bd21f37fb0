using System.Text.Json;
using System.Text.Json.Serialization;

namespace AdapterService.Core.Adapters;

/// <summary>PEFT's <c>adapter_config.json</c> for LoRA; property names are PEFT's, so the file interoperates.</summary>
public sealed record LoraConfig
{
    [JsonPropertyName("peft_type")] public string PeftType { get; init; } = "LORA";
    [JsonPropertyName("task_type")] public string TaskType { get; init; } = "CAUSAL_LM";
    [JsonPropertyName("base_model_name_or_path")] public string? BaseModel { get; init; }
    [JsonPropertyName("r")] public int Rank { get; init; } = 8;
    [JsonPropertyName("lora_alpha")] public double Alpha { get; init; } = 16;
    [JsonPropertyName("lora_dropout")] public double Dropout { get; init; }
    /// <summary>Module names (a module matches when its path ends with one), or one regex over the full path, or "all-linear".</summary>
    [JsonPropertyName("target_modules"), JsonConverter(typeof(StringOrListConverter))]
    public IReadOnlyList<string> TargetModules { get; init; } = ["q_proj", "v_proj"];
    [JsonPropertyName("use_rslora")] public bool UseRsLora { get; init; }
    [JsonPropertyName("bias")] public string Bias { get; init; } = "none";
    [JsonPropertyName("fan_in_fan_out")] public bool FanInFanOut { get; init; }
    [JsonPropertyName("inference_mode")] public bool InferenceMode { get; init; } = true;

    /// <summary>alpha / r, or alpha / sqrt(r) with rsLoRA.</summary>
    [JsonIgnore] public double Scaling => UseRsLora ? Alpha / Math.Sqrt(Rank) : Alpha / Rank;

    public const string FileName = "adapter_config.json";
    static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    public void Save(string folder) => File.WriteAllText(Path.Combine(folder, FileName), JsonSerializer.Serialize(this, Json));

    public static LoraConfig Load(string folder)
    {
        var config = JsonSerializer.Deserialize<LoraConfig>(File.ReadAllText(Path.Combine(folder, FileName)), Json)
                     ?? throw new InvalidDataException($"{FileName} is empty");
        if (config.PeftType != "LORA") throw new InvalidDataException($"{FileName}: peft_type {config.PeftType} is not LORA");
        if (config.Rank <= 0) throw new InvalidDataException($"{FileName}: r must be positive");
        return config;
    }

    /// <summary>PEFT writes target_modules either as a list of names or as a single regex string.</summary>
    sealed class StringOrListConverter : JsonConverter<IReadOnlyList<string>>
    {
        public override IReadOnlyList<string> Read(ref Utf8JsonReader reader, Type type, JsonSerializerOptions options) =>
            reader.TokenType == JsonTokenType.String
                ? [reader.GetString()!]
                : JsonSerializer.Deserialize<string[]>(ref reader, options) ?? [];

        public override void Write(Utf8JsonWriter writer, IReadOnlyList<string> value, JsonSerializerOptions options) =>
            JsonSerializer.Serialize(writer, value.ToArray(), options);
    }
}
