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
    };

    /// <summary>Reads and checks a config.json; the errors name the file, the key and the problem.</summary>
    public static ModelConfig Load(string path)
    {
        string text = File.ReadAllText(path);
        ModelConfig config;
        try
        {
            using var doc = JsonDocument.Parse(text);
            if (doc.RootElement.ValueKind != JsonValueKind.Object) throw new InvalidDataException($"{path}: not a JSON object");
            if (!doc.RootElement.TryGetProperty("model_type", out var type) || type.ValueKind != JsonValueKind.String)
                throw new InvalidDataException($"{path}: model_type is missing or not a string");
            string modelType = type.GetString()!;
            if (!Families.TryGetValue(modelType, out var family))
                throw new InvalidDataException($"{path}: model_type '{modelType}' is not supported (supported: {string.Join(", ", Families.Keys)})");
            config = (ModelConfig)(JsonSerializer.Deserialize(text, family, Json) ?? throw new InvalidDataException($"{path}: is null"));
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: {e.Message}", e);
        }
        if (config.Architectures is { Length: > 0 } architectures && !architectures.Contains(config.Architecture))
            throw new InvalidDataException(
                $"{path}: architectures [{string.Join(", ", architectures)}] are not supported for model_type '{config.ModelType}'; this service runs {config.Architecture}");
        if (config.Problems().ToList() is { Count: > 0 } problems)
            throw new InvalidDataException($"{path}: {string.Join("; ", problems)}");
        return config;
    }

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
