using System.Collections.Concurrent;
using System.Reflection;
using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// The Hugging Face <c>config.json</c> of a model family this service runs; <see cref="Load"/> picks the family by
/// <c>model_type</c>. Keys that define the weights' shapes are required, as Hugging Face always writes them.
/// </summary>
public abstract record ModelConfig
{
    [JsonPropertyName("model_type")] public string ModelType { get; init; } = "";
    [JsonPropertyName("architectures")] public string[]? Architectures { get; init; }
    [JsonPropertyName("torch_dtype")] public string TorchDtype { get; init; } = "float32";
    /// <summary>transformers 5.x's name for torch_dtype: read into <see cref="TorchDtype"/>, written as torch_dtype.</summary>
    [JsonPropertyName("dtype")] public string? Dtype { get => null; init => TorchDtype = value ?? TorchDtype; }

    /// <summary>The class this service builds for the family; its name is the Hugging Face architecture (e.g. <c>GPT2LMHeadModel</c>).</summary>
    [JsonIgnore] public abstract Type ModelClass { get; }
    [JsonIgnore] public string Architecture => ModelClass.Name;

    /// <summary>A model with this shape and uninitialised weights.</summary>
    public abstract nn.Module<Tensor, Tensor> CreateModel();

    /// <summary>Each linear layer's path (as <see cref="AdaptableModules.LinearLayers"/> yields it) with its input and output sizes, from the config alone.</summary>
    public abstract IEnumerable<(string Path, long In, long Out)> LinearShapes();

    public IEnumerable<string> LinearPaths() => LinearShapes().Select(l => l.Path);

    /// <summary>Each norm layer's path (as <see cref="AdaptableModules.NormLayers"/> yields it) with its size, from the config alone.</summary>
    public abstract IEnumerable<(string Path, long Size)> NormShapes();

    /// <summary>What is missing or inconsistent, one message per problem naming the key.</summary>
    protected abstract IEnumerable<string> Problems();

    static readonly JsonSerializerOptions Json = new() { WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull };

    static readonly Dictionary<string, Type> Families = new(StringComparer.Ordinal)
    {
        ["llama"] = typeof(LlamaConfig), ["qwen2"] = typeof(Qwen2Config), ["qwen3"] = typeof(Qwen3Config), ["mistral"] = typeof(MistralConfig),
        ["phi3"] = typeof(Phi3Config), ["smollm3"] = typeof(SmolLM3Config),
        ["gpt2"] = typeof(Gpt2Config), ["vit"] = typeof(VitConfig),
        ["gemma2"] = typeof(Gemma2Config), ["gemma3_text"] = typeof(Gemma3TextConfig),
        ["qwen3_moe"] = typeof(Qwen3MoeConfig),
    };

    /// <summary>Multimodal model_types run as their text model: the text model's config.json, from the outer one.</summary>
    static readonly Dictionary<string, Func<JsonElement, string>> TextModels = new(StringComparer.Ordinal)
    {
        ["gemma3"] = Gemma3TextConfig.FromMultimodal,
    };

    /// <summary>
    /// Model types people try that this service does not run, with what they are, so the refusal says why rather than
    /// listing the supported families. These multimodal models are refused whole: their text decoder's weights sit under other
    /// names and their rope (M-RoPE) differs, so it cannot be loaded as the plain family either (Gemma 3's, whose text model
    /// is gemma3_text's, is read as that: <see cref="TextModels"/>).
    /// </summary>
    static readonly Dictionary<string, string> Unsupported = new(StringComparer.Ordinal)
    {
        ["qwen2_vl"] = VisionLanguage("Qwen2-VL"), ["qwen2_5_vl"] = VisionLanguage("Qwen2.5-VL"), ["qwen3_vl"] = VisionLanguage("Qwen3-VL"),
        ["llava"] = VisionLanguage("LLaVA"), ["llava_next"] = VisionLanguage("LLaVA-NeXT"), ["llava_onevision"] = VisionLanguage("LLaVA-OneVision"),
        ["mllama"] = VisionLanguage("Llama 3.2 Vision"), ["phi3_v"] = VisionLanguage("Phi-3 Vision"), ["phi4_multimodal"] = VisionLanguage("Phi-4 multimodal"),
        ["idefics2"] = VisionLanguage("Idefics2"), ["idefics3"] = VisionLanguage("Idefics3"), ["smolvlm"] = VisionLanguage("SmolVLM"),
        ["paligemma"] = VisionLanguage("PaliGemma"), ["mistral3"] = VisionLanguage("Mistral Small 3.1"), ["pixtral"] = VisionLanguage("Pixtral"),
        ["internvl"] = VisionLanguage("InternVL"), ["llama4"] = "a mixture-of-experts vision-language model (Llama 4)",
        ["mixtral"] = MixtureOfExperts("Mixtral"), ["qwen2_moe"] = MixtureOfExperts("Qwen1.5-MoE / Qwen2-MoE"),
        ["deepseek_v2"] = MixtureOfExperts("DeepSeek-V2"), ["deepseek_v3"] = MixtureOfExperts("DeepSeek-V3"), ["phimoe"] = MixtureOfExperts("Phi-3.5-MoE"),
        ["olmoe"] = MixtureOfExperts("OLMoE"), ["granitemoe"] = MixtureOfExperts("Granite MoE"), ["dbrx"] = MixtureOfExperts("DBRX"),
        ["jamba"] = "a hybrid Mamba/attention mixture-of-experts model (Jamba)",
    };

    static string Supported => string.Join(", ", Families.Keys.Concat(TextModels.Keys));

    static string VisionLanguage(string name) => $"a vision-language model ({name}); this service runs text-only decoders and ViT classifiers, not image-and-text models";
    static string MixtureOfExperts(string name) => $"a mixture-of-experts model ({name}); this service runs one mixture-of-experts family, qwen3_moe";

    /// <summary>
    /// Reads and checks a config.json; the errors name the file (config.json, never the folder it is in), the key and
    /// the problem.
    /// </summary>
    public static ModelConfig Load(string path)
    {
        string file = System.IO.Path.GetFileName(path);
        if (!File.Exists(path)) throw new InvalidDataException($"{file} is missing");
        string text = File.ReadAllText(path);
        ModelConfig config;
        List<string> problems;
        try
        {
            using var doc = JsonDocument.Parse(text);
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{file}: not a JSON object");
            if (!doc.RootElement.TryGetProperty("model_type", out var type) || type.ValueKind != JsonValueKind.String)
                throw new InvalidDataException($"{file}: model_type is missing or not a string");
            string modelType = type.GetString()!;
            // A multimodal config read as its text model's: its keys are the ones checked.
            using var inner = TextModels.TryGetValue(modelType, out var textModel) ? JsonDocument.Parse(text = textModel(doc.RootElement)) : null;
            var root = inner?.RootElement ?? doc.RootElement;
            if (inner is not null) modelType = root.GetProperty("model_type").GetString()!;
            if (!Families.TryGetValue(modelType, out var family))
                throw new InvalidDataException(Unsupported.TryGetValue(modelType, out var what)
                    ? $"{file}: model_type '{modelType}' is {what} (supported: {Supported})"
                    : $"{file}: model_type '{modelType}' is not supported (supported: {Supported})");
            config = (ModelConfig)(JsonSerializer.Deserialize(text, family, Json) ?? throw new InvalidDataException($"{file}: is null"));
            problems = [.. config.UnimplementedMathKeys(root)];
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{file}: {e.Message}", e);
        }
        catch (InvalidOperationException e)   // a key or string escaping half a surrogate pair ("\ud800"): valid JSON, no .NET string (found by fuzzing)
        {
            throw new InvalidDataException($"{file}: holds a key or string that is not valid Unicode text (an unpaired surrogate escape)", e);
        }
        if (config.Architectures is { Length: > 0 } architectures && !architectures.Contains(config.Architecture))
            throw new InvalidDataException(
                $"{file}: architectures [{string.Join(", ", architectures)}] are not supported for model_type '{config.ModelType}'; this service runs {config.Architecture}");
        problems.InsertRange(0, config.Problems());
        if (problems.Count > 0) throw new InvalidDataException($"{file}: {string.Join("; ", problems)}");
        return config;
    }

    /// <summary>
    /// The config.json keys this family implements: the JSON names of its properties (its base's included). Every other
    /// key is ignored, unless <see cref="MathKeys"/> lists it.
    /// </summary>
    [JsonIgnore] public IReadOnlySet<string> ImplementedKeys => KeysOf.GetOrAdd(GetType(), type => type
        .GetProperties(BindingFlags.Public | BindingFlags.Instance)
        .Select(p => p.GetCustomAttribute<JsonPropertyNameAttribute>()?.Name).OfType<string>().ToHashSet(StringComparer.Ordinal));

    static readonly ConcurrentDictionary<Type, HashSet<string>> KeysOf = new();

    /// <summary>
    /// Keys that change the math in some Hugging Face family, each with the test of its neutral value. One this family does
    /// not implement (not in <see cref="ImplementedKeys"/>) is refused at any other value, so a checkpoint of a variant this
    /// code does not compute is never loaded and run silently wrong; unknown keys without a meaning for the math pass. A
    /// family adds the keys its relatives read by overriding this (<c>base.MathKeys</c> plus its own).
    /// </summary>
    [JsonIgnore] protected virtual IReadOnlyDictionary<string, Func<JsonElement, bool>> MathKeys => CommonMathKeys;

    /// <summary>Keys with a meaning for the math in any family: mixture-of-experts counts (Mixtral, Qwen-MoE's).</summary>
    protected static readonly IReadOnlyDictionary<string, Func<JsonElement, bool>> CommonMathKeys = new Dictionary<string, Func<JsonElement, bool>>(StringComparer.Ordinal)
    {
        ["num_experts"] = e => IsNull(e) || Is(e, 0),
        ["num_local_experts"] = e => IsNull(e) || Is(e, 0),
        ["n_routed_experts"] = e => IsNull(e) || Is(e, 0),
        ["moe_num_experts"] = e => IsNull(e) || Is(e, 0),
    };

    IEnumerable<string> UnimplementedMathKeys(JsonElement root)
    {
        var implemented = ImplementedKeys;
        foreach (var entry in root.EnumerateObject())
            if (!implemented.Contains(entry.Name) && MathKeys.TryGetValue(entry.Name, out var neutral) && !neutral(entry.Value))
                yield return $"{entry.Name} {Shorten(entry.Value.GetRawText())} changes the math and is not implemented for model_type '{ModelType}'";
    }

    static string Shorten(string json) => json.Length <= 80 ? json : json[..77] + "...";

    // Neutral-value tests for MathKeys tables.
    protected static bool IsNull(JsonElement e) => e.ValueKind == JsonValueKind.Null;
    protected static bool Is(JsonElement e, double value) => e.ValueKind == JsonValueKind.Number && e.TryGetDouble(out double d) && d == value;
    protected static bool IsFalse(JsonElement e) => e.ValueKind is JsonValueKind.False or JsonValueKind.Null;
    protected static bool IsEmpty(JsonElement e) => IsNull(e) || (e.ValueKind == JsonValueKind.Array && e.GetArrayLength() == 0);

    public void Save(string path) => File.WriteAllText(path, JsonSerializer.Serialize(this, GetType(), Json));

    /// <summary>The activation a Hugging Face config names (<c>activation_function</c>, <c>hidden_act</c>).</summary>
    internal static Func<Tensor, Tensor>? Activation(string name) => name switch
    {
        "gelu_new" or "gelu_pytorch_tanh" => x => nn.functional.gelu(x, TorchSharp.Modules.GELU.Approximate.tanh),
        "gelu" => x => nn.functional.gelu(x),
        "relu" => x => nn.functional.relu(x),
        "silu" or "swish" => x => nn.functional.silu(x),
        _ => null,
    };

    internal const string Activations = "gelu_new, gelu_pytorch_tanh, gelu, relu, silu";
}

/// <summary>A token id as Hugging Face configs write it: one number, or a list of them (Llama 3 Instruct's eos_token_id).</summary>
public sealed class TokenIdsConverter : JsonConverter<int[]?>
{
    public override int[]? Read(ref Utf8JsonReader reader, Type typeToConvert, JsonSerializerOptions options)
    {
        if (reader.TokenType == JsonTokenType.Number) return [reader.GetInt32()];
        if (reader.TokenType != JsonTokenType.StartArray) throw new JsonException("expected a token id or a list of token ids");
        var ids = new List<int>();
        while (reader.Read() && reader.TokenType != JsonTokenType.EndArray)
            ids.Add(reader.TokenType == JsonTokenType.Number ? reader.GetInt32() : throw new JsonException("expected a list of token ids"));
        return [.. ids];
    }

    public override void Write(Utf8JsonWriter writer, int[]? value, JsonSerializerOptions options)
    {
        if (value is null) writer.WriteNullValue();
        else if (value.Length == 1) writer.WriteNumberValue(value[0]);
        else JsonSerializer.Serialize(writer, value);
    }
}
