using System.Text.Json;
using System.Text.Json.Serialization;

namespace AdapterService.Core.Models;

/// <summary>The Hugging Face <c>config.json</c> of a Llama-family model (the fields this service reads and writes).</summary>
public sealed record LlamaConfig
{
    [JsonPropertyName("model_type")] public string ModelType { get; init; } = "llama";
    [JsonPropertyName("architectures")] public string[] Architectures { get; init; } = ["LlamaForCausalLM"];
    [JsonPropertyName("vocab_size")] public int VocabSize { get; init; }
    [JsonPropertyName("hidden_size")] public int HiddenSize { get; init; }
    [JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; }
    [JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; init; }
    [JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; init; }
    [JsonPropertyName("num_key_value_heads")] public int? NumKeyValueHeads { get; init; }
    [JsonPropertyName("max_position_embeddings")] public int MaxPositionEmbeddings { get; init; } = 2048;
    [JsonPropertyName("rms_norm_eps")] public double RmsNormEps { get; init; } = 1e-5;
    [JsonPropertyName("rope_theta")] public double RopeTheta { get; init; } = 10000;
    [JsonPropertyName("tie_word_embeddings")] public bool TieWordEmbeddings { get; init; }
    [JsonPropertyName("bos_token_id")] public int? BosTokenId { get; init; }
    [JsonPropertyName("eos_token_id")] public int? EosTokenId { get; init; }
    [JsonPropertyName("torch_dtype")] public string TorchDtype { get; init; } = "float32";

    [JsonIgnore] public int KeyValueHeads => NumKeyValueHeads ?? NumAttentionHeads;
    [JsonIgnore] public int HeadDim => HiddenSize / NumAttentionHeads;

    static readonly JsonSerializerOptions Json = new() { WriteIndented = true };

    public static LlamaConfig Load(string path)
    {
        var config = JsonSerializer.Deserialize<LlamaConfig>(File.ReadAllText(path), Json)
                     ?? throw new InvalidDataException($"{path} is empty");
        if (config.HiddenSize <= 0 || config.NumAttentionHeads <= 0 || config.HiddenSize % config.NumAttentionHeads != 0
            || config.NumAttentionHeads % config.KeyValueHeads != 0 || config.VocabSize <= 0 || config.NumHiddenLayers <= 0)
            throw new InvalidDataException($"{path} does not describe a valid Llama model");
        return config;
    }

    public void Save(string path) => File.WriteAllText(path, JsonSerializer.Serialize(this, Json));
}
