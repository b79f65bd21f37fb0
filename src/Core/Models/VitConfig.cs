using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>The Hugging Face <c>config.json</c> of a Vision Transformer image classifier (<c>model_type: vit</c>).</summary>
public sealed record VitConfig : ModelConfig
{
    public VitConfig()
    {
        ModelType = "vit";
        Architectures = [nameof(ViTForImageClassification)];
    }

    [JsonRequired, JsonPropertyName("hidden_size")] public int HiddenSize { get; init; }
    [JsonRequired, JsonPropertyName("num_hidden_layers")] public int NumHiddenLayers { get; init; }
    [JsonRequired, JsonPropertyName("num_attention_heads")] public int NumAttentionHeads { get; init; }
    [JsonRequired, JsonPropertyName("intermediate_size")] public int IntermediateSize { get; init; }
    [JsonRequired, JsonPropertyName("image_size")] public int ImageSize { get; init; }
    [JsonRequired, JsonPropertyName("patch_size")] public int PatchSize { get; init; }
    [JsonPropertyName("num_channels")] public int NumChannels { get; init; } = 3;
    [JsonPropertyName("layer_norm_eps")] public double LayerNormEps { get; init; } = 1e-12;
    [JsonPropertyName("hidden_act")] public string HiddenAct { get; init; } = "gelu";
    [JsonPropertyName("qkv_bias")] public bool QkvBias { get; init; } = true;
    /// <summary>Class index (as a string, as Hugging Face writes it) to label. Hugging Face leaves it out for its default of two labels.</summary>
    [JsonPropertyName("id2label")] public Dictionary<string, string>? Id2Label { get; init; }
    [JsonPropertyName("label2id")] public Dictionary<string, int>? Label2Id { get; init; }
    /// <summary>Hugging Face does not write it, but accepts it; when given it must agree with id2label.</summary>
    [JsonPropertyName("num_labels")] public int? NumLabelsKey { get; init; }

    /// <summary>Class labels in index order.</summary>
    [JsonIgnore]
    public IReadOnlyList<string> Labels => Id2Label is null
        ? Enumerable.Range(0, NumLabelsKey ?? 2).Select(i => $"LABEL_{i}").ToList()
        : Enumerable.Range(0, Id2Label.Count).Select(i => Id2Label.GetValueOrDefault(i.ToString(CultureInfo.InvariantCulture)) ?? $"LABEL_{i}").ToList();

    [JsonIgnore] public int NumLabels => Labels.Count;
    [JsonIgnore] public int HeadDim => HiddenSize / NumAttentionHeads;
    [JsonIgnore] public int NumPatches => (ImageSize / PatchSize) * (ImageSize / PatchSize);
    [JsonIgnore] public override Type ModelClass => typeof(ViTForImageClassification);

    /// <summary>The config of ViT-B/16 at 224×224 (google/vit-base-patch16-224's shape) with the given labels.</summary>
    public static VitConfig Base16(IReadOnlyList<string> labels) => new()
    {
        HiddenSize = 768, NumHiddenLayers = 12, NumAttentionHeads = 12, IntermediateSize = 3072,
        ImageSize = 224, PatchSize = 16, NumChannels = 3, LayerNormEps = 1e-12, QkvBias = true,
        Id2Label = labels.Select((l, i) => (l, i)).ToDictionary(x => x.i.ToString(CultureInfo.InvariantCulture), x => x.l),
        Label2Id = labels.Select((l, i) => (l, i)).DistinctBy(x => x.l).ToDictionary(x => x.l, x => x.i),
    };

    /// <summary>ViT-B/16 with <paramref name="numLabels"/> labels named as Hugging Face names them by default (LABEL_0, ...).</summary>
    public static VitConfig Base16(int numLabels = 1000) => Base16([.. Enumerable.Range(0, numLabels).Select(i => $"LABEL_{i}")]);

    public override nn.Module<Tensor, Tensor> CreateModel() => new ViTForImageClassification(this);

    /// <summary>Keys of ViT's relatives (DINOv2, BEiT, Data2Vec) that change the math, refused unless neutral.</summary>
    protected override IReadOnlyDictionary<string, Func<JsonElement, bool>> MathKeys => VitMathKeys;

    static readonly IReadOnlyDictionary<string, Func<JsonElement, bool>> VitMathKeys = new Dictionary<string, Func<JsonElement, bool>>(CommonMathKeys, StringComparer.Ordinal)
    {
        ["layerscale_value"] = IsNull,
        ["layer_scale_init_value"] = e => IsNull(e) || Is(e, 0),
        ["use_swiglu_ffn"] = IsFalse,
        ["num_register_tokens"] = e => IsNull(e) || Is(e, 0),
        ["use_relative_position_bias"] = IsFalse,
        ["use_shared_relative_position_bias"] = IsFalse,
        ["use_absolute_position_embeddings"] = e => IsNull(e) || e.ValueKind == JsonValueKind.True,
        ["use_mean_pooling"] = IsFalse,
    };

    public override IEnumerable<(string Path, long In, long Out)> LinearShapes()
    {
        for (int i = 0; i < NumHiddenLayers; i++)
        {
            string layer = $"vit.encoder.layer.{i}";
            yield return ($"{layer}.attention.attention.query", HiddenSize, HiddenSize);
            yield return ($"{layer}.attention.attention.key", HiddenSize, HiddenSize);
            yield return ($"{layer}.attention.attention.value", HiddenSize, HiddenSize);
            yield return ($"{layer}.attention.output.dense", HiddenSize, HiddenSize);
            yield return ($"{layer}.intermediate.dense", HiddenSize, IntermediateSize);
            yield return ($"{layer}.output.dense", IntermediateSize, HiddenSize);
        }
        yield return ("classifier", HiddenSize, NumLabels);
    }

    public override IEnumerable<(string Path, long Size)> NormShapes() =>
        Enumerable.Range(0, NumHiddenLayers).SelectMany(i => new[]
            { ($"vit.encoder.layer.{i}.layernorm_before", (long)HiddenSize), ($"vit.encoder.layer.{i}.layernorm_after", HiddenSize) })
            .Append(("vit.layernorm", HiddenSize));

    protected override IEnumerable<string> Problems()
    {
        foreach (var (key, value) in new[] { ("hidden_size", HiddenSize), ("num_hidden_layers", NumHiddenLayers), ("num_attention_heads", NumAttentionHeads),
                     ("intermediate_size", IntermediateSize), ("image_size", ImageSize), ("patch_size", PatchSize), ("num_channels", NumChannels) })
            if (value <= 0) yield return $"{key} is {value}; it must be positive";
        if (NumAttentionHeads > 0 && HiddenSize % NumAttentionHeads != 0)
            yield return $"num_attention_heads ({NumAttentionHeads}) does not divide hidden_size ({HiddenSize})";
        if (PatchSize > 0 && ImageSize % PatchSize != 0) yield return $"patch_size ({PatchSize}) does not divide image_size ({ImageSize})";
        if (Activation(HiddenAct) is null) yield return $"hidden_act '{HiddenAct}' is not supported (supported: {Activations})";
        if (LayerNormEps <= 0) yield return $"layer_norm_eps is {LayerNormEps}; it must be positive";
        if (Id2Label is not null)
        {
            if (Id2Label.Count == 0) yield return "id2label is empty; a classifier needs at least one label";
            foreach (string key in Id2Label.Keys)
                if (!int.TryParse(key, NumberStyles.None, CultureInfo.InvariantCulture, out int id) || id >= Id2Label.Count)
                    yield return $"id2label key '{key}' is not a class index in [0, {Id2Label.Count})";
            if (NumLabelsKey is { } n && n != Id2Label.Count) yield return $"num_labels ({n}) differs from the {Id2Label.Count} entries of id2label";
            // Predictions are answered by label name, so two classes may not share one.
            foreach (var repeated in Id2Label.Values.GroupBy(v => v).Where(g => g.Count() > 1))
                yield return $"id2label names '{repeated.Key}' for {repeated.Count()} classes; each label must be distinct";
        }
        else if (NumLabelsKey is <= 0) yield return $"num_labels is {NumLabelsKey}; it must be positive";
    }
}
