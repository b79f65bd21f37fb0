using System.Text.Json;
using System.Text.Json.Serialization;

namespace AdapterService.Core.Adapters;

/// <summary>
/// The <c>adapter_config.json</c> of any adapter method: the fields every method shares (PEFT's names), with one
/// record per method adding its own. <c>peft_type</c> says which method a folder holds.
/// </summary>
public abstract record AdapterConfig
{
    [JsonPropertyName("peft_type")] public abstract string PeftType { get; init; }
    [JsonPropertyName("task_type")] public string TaskType { get; init; } = "CAUSAL_LM";
    [JsonPropertyName("base_model_name_or_path")] public string? BaseModel { get; init; }
    /// <summary>Module names (a module matches when its path ends with one), or one regex over the full path, or "all-linear".</summary>
    [JsonPropertyName("target_modules"), JsonConverter(typeof(StringOrListConverter))]
    public IReadOnlyList<string> TargetModules { get; init; } = ["q_proj", "v_proj"];
    [JsonPropertyName("inference_mode")] public bool InferenceMode { get; init; } = true;
    /// <summary>PEFT's modules trained whole and saved with the adapter: <c>["classifier"]</c> when it has its own label set.</summary>
    [JsonPropertyName("modules_to_save"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IReadOnlyList<string>? ModulesToSave { get; init; }
    /// <summary>Our extension for image classifiers: the adapter's own labels in class order (its classifier's rows).</summary>
    [JsonPropertyName("labels"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)]
    public IReadOnlyList<string>? Labels { get; init; }

    /// <summary>The method's name in the API's <c>adapter.type</c>.</summary>
    [JsonIgnore] public abstract string Method { get; }

    /// <summary>Causal language models see each token's past only; methods that pool over tokens must respect that.</summary>
    [JsonIgnore] public bool Causal => TaskType == "CAUSAL_LM";

    public const string FileName = "adapter_config.json";
    internal static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    public void Save(string folder) => File.WriteAllText(Path.Combine(folder, FileName), ToJson());

    public string ToJson() => JsonSerializer.Serialize(this, GetType(), Json);

    /// <summary>Reads a folder's config as the record of the method its <c>peft_type</c> names, checked.</summary>
    public static AdapterConfig Load(string folder)
    {
        string path = Path.Combine(folder, FileName);
        if (!File.Exists(path)) throw new InvalidDataException($"{FileName} is missing");
        return Parse(File.ReadAllText(path));
    }

    public static AdapterConfig Parse(string json)
    {
        try
        {
            using var document = JsonDocument.Parse(json);
            if (document.RootElement.ValueKind != JsonValueKind.Object || !document.RootElement.TryGetProperty("peft_type", out var type)
                || type.ValueKind != JsonValueKind.String)
                throw new InvalidDataException($"{FileName} has no peft_type");
            var method = AdapterMethods.FindPeftType(type.GetString())
                ?? throw new InvalidDataException($"{FileName}: peft_type {type.GetString()} is not supported ({string.Join(", ", AdapterMethods.PeftTypes)})");
            var config = method.Read(document);
            if (config.TargetModules.Count == 0 && AdapterMethods.Of(config).RequiresTargetModules) throw new InvalidDataException($"{FileName}: target_modules is empty");
            config.Validate();
            return config;
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException)   // the latter: strings with lone surrogate escapes
        {
            throw new InvalidDataException($"{FileName} is not valid: {e.Message}");
        }
        catch (ArgumentException e)
        {
            throw new InvalidDataException($"{FileName}: {e.Message}");
        }
    }

    /// <summary>Throws <see cref="ArgumentException"/> naming the first option out of range.</summary>
    public abstract void Validate();

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
