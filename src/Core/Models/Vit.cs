using System.Globalization;
using System.Text.Json.Serialization;
using TorchSharp;
using TorchSharp.Modules;
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

/// <summary>
/// A Vision Transformer classifier (patch embedding, CLS token, learned positions, pre-LayerNorm encoder blocks,
/// linear head on the final CLS state) with the Hugging Face <c>ViTForImageClassification</c> parameter names.
/// </summary>
public sealed class ViTForImageClassification : nn.Module<Tensor, Tensor>, IHuggingFaceModel
{
    public readonly ViTModel vit;
    public readonly AdaptableLinear classifier;
    public VitConfig Config { get; }

    public ViTForImageClassification(VitConfig config) : base(nameof(ViTForImageClassification))
    {
        Config = config;
        vit = new ViTModel(config);
        classifier = new AdaptableLinear(config.HiddenSize, config.NumLabels, hasBias: true);
        RegisterComponents();
    }

    /// <summary>Class logits [batch, labels] for images [batch, channels, image_size, image_size].</summary>
    public override Tensor forward(Tensor pixelValues) => classifier.forward(Features(pixelValues));   // [b, labels]

    /// <summary>The final CLS state [batch, hidden] the classifier reads (an adapter's own classifier reads it too).</summary>
    public Tensor Features(Tensor pixelValues) => vit.forward(pixelValues).select(1, 0);

    ModelConfig IHuggingFaceModel.ModelConfig => Config;

    public IEnumerable<CheckpointTensor> CheckpointTensors() => named_parameters().Select(p => new CheckpointTensor(p.name, p.parameter));
}

public sealed class ViTModel : nn.Module<Tensor, Tensor>
{
    public readonly ViTEmbeddings embeddings;
    public readonly ViTEncoder encoder;
    public readonly AdaptableLayerNorm layernorm;

    public ViTModel(VitConfig config) : base(nameof(ViTModel))
    {
        embeddings = new ViTEmbeddings(config);
        encoder = new ViTEncoder(config);
        layernorm = new AdaptableLayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixelValues) =>
        layernorm.forward(encoder.forward(embeddings.forward(pixelValues)));     // [b, 1 + patches, hidden]
}

public sealed class ViTEmbeddings : nn.Module<Tensor, Tensor>
{
    public readonly Parameter cls_token, position_embeddings;
    public readonly ViTPatchEmbeddings patch_embeddings;

    public ViTEmbeddings(VitConfig config) : base(nameof(ViTEmbeddings))
    {
        cls_token = new Parameter(zeros(1, 1, config.HiddenSize));
        position_embeddings = new Parameter(zeros(1, config.NumPatches + 1, config.HiddenSize));
        patch_embeddings = new ViTPatchEmbeddings(config);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixelValues)
    {
        var patches = patch_embeddings.forward(pixelValues);                         // [b, patches, hidden]
        var cls = cls_token.expand(patches.shape[0], -1, -1);                         // [b, 1, hidden]
        return cat([cls, patches], 1) + position_embeddings;                         // [b, 1 + patches, hidden]
    }
}

public sealed class ViTPatchEmbeddings : nn.Module<Tensor, Tensor>
{
    public readonly Conv2d projection;
    readonly int channels, imageSize;

    public ViTPatchEmbeddings(VitConfig config) : base(nameof(ViTPatchEmbeddings))
    {
        (channels, imageSize) = (config.NumChannels, config.ImageSize);
        projection = nn.Conv2d(config.NumChannels, config.HiddenSize, config.PatchSize, stride: config.PatchSize);
        RegisterComponents();
    }

    public override Tensor forward(Tensor pixelValues)
    {
        if (pixelValues.dim() != 4 || pixelValues.shape[1] != channels || pixelValues.shape[2] != imageSize || pixelValues.shape[3] != imageSize)
            throw new ArgumentException(
                $"images are [{string.Join(", ", pixelValues.shape)}]; this model takes [batch, {channels}, {imageSize}, {imageSize}]");
        var grid = projection.forward(pixelValues);                                  // [b, hidden, rows, cols]
        return grid.flatten(2).transpose(1, 2);                                      // [b, patches, hidden]
    }
}

public sealed class ViTEncoder : nn.Module<Tensor, Tensor>
{
    public readonly ModuleList<ViTLayer> layer;

    public ViTEncoder(VitConfig config) : base(nameof(ViTEncoder))
    {
        layer = new ModuleList<ViTLayer>(Enumerable.Range(0, config.NumHiddenLayers).Select(_ => new ViTLayer(config)).ToArray());
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        foreach (var block in layer) x = block.forward(x);                           // [b, tokens, hidden]
        return x;
    }
}

/// <summary>A pre-norm encoder block: x + attention(LN(x)), then h + MLP(LN(h)).</summary>
/// <summary>A pre-norm encoder block; its feed-forward part (intermediate.dense, the activation, output.dense) has the block-level adapter slot.</summary>
public sealed class ViTLayer : nn.Module<Tensor, Tensor>, IFeedForward
{
    public readonly ViTAttention attention;
    public readonly ViTIntermediate intermediate;
    public readonly ViTOutput output;
    public readonly AdaptableLayerNorm layernorm_before, layernorm_after;

    public IFeedForwardAdapter? Adapter { get; set; }
    public IReadOnlyList<(string Name, AdaptableLinear Layer)> Projections => [("intermediate.dense", intermediate.dense), ("output.dense", output.dense)];

    public Tensor Compute(Tensor x, Func<string, AdaptableLinear, Tensor, Tensor> project) =>
        project("output.dense", output.dense, intermediate.Activate(project("intermediate.dense", intermediate.dense, x)));

    public ViTLayer(VitConfig config) : base(nameof(ViTLayer))
    {
        attention = new ViTAttention(config);
        intermediate = new ViTIntermediate(config);
        output = new ViTOutput(config);
        layernorm_before = new AdaptableLayerNorm(config.HiddenSize, config.LayerNormEps);
        layernorm_after = new AdaptableLayerNorm(config.HiddenSize, config.LayerNormEps);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        var h = x + attention.forward(layernorm_before.forward(x));                 // [b, tokens, hidden]
        var normed = layernorm_after.forward(h);
        return h + (Adapter?.Forward(normed, this) ?? output.forward(intermediate.forward(normed)));   // [b, tokens, hidden]
    }
}

public sealed class ViTAttention : nn.Module<Tensor, Tensor>
{
    public readonly ViTSelfAttention attention;
    public readonly ViTSelfOutput output;

    public ViTAttention(VitConfig config) : base(nameof(ViTAttention))
    {
        attention = new ViTSelfAttention(config);
        output = new ViTSelfOutput(config);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => output.forward(attention.forward(x));   // [b, tokens, hidden]
}

/// <summary>Bidirectional multi-head self-attention over all tokens.</summary>
public sealed class ViTSelfAttention : nn.Module<Tensor, Tensor>
{
    public readonly AdaptableLinear query, key, value;
    readonly int heads, headDim;

    public ViTSelfAttention(VitConfig config) : base(nameof(ViTSelfAttention))
    {
        (heads, headDim) = (config.NumAttentionHeads, config.HeadDim);
        query = new AdaptableLinear(config.HiddenSize, config.HiddenSize, config.QkvBias);
        key = new AdaptableLinear(config.HiddenSize, config.HiddenSize, config.QkvBias);
        value = new AdaptableLinear(config.HiddenSize, config.HiddenSize, config.QkvBias);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x)
    {
        long b = x.shape[0], t = x.shape[1];
        var q = query.forward(x).view(b, t, heads, headDim).transpose(1, 2);        // [b, heads, t, hd]
        var k = key.forward(x).view(b, t, heads, headDim).transpose(1, 2);          // [b, heads, t, hd]
        var v = value.forward(x).view(b, t, heads, headDim).transpose(1, 2);        // [b, heads, t, hd]
        var y = nn.functional.scaled_dot_product_attention(q, k, v);                // [b, heads, t, hd]
        return y.transpose(1, 2).reshape(b, t, heads * headDim);                    // [b, t, hidden]
    }
}

public sealed class ViTSelfOutput : nn.Module<Tensor, Tensor>
{
    public readonly AdaptableLinear dense;

    public ViTSelfOutput(VitConfig config) : base(nameof(ViTSelfOutput))
    {
        dense = new AdaptableLinear(config.HiddenSize, config.HiddenSize, hasBias: true);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => dense.forward(x);                   // [b, t, hidden]
}

public sealed class ViTIntermediate : nn.Module<Tensor, Tensor>
{
    public readonly AdaptableLinear dense;
    readonly Func<Tensor, Tensor> act;

    public ViTIntermediate(VitConfig config) : base(nameof(ViTIntermediate))
    {
        dense = new AdaptableLinear(config.HiddenSize, config.IntermediateSize, hasBias: true);
        act = ModelConfig.Activation(config.HiddenAct) ?? throw new ArgumentException($"hidden_act '{config.HiddenAct}' is not supported");
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => act(dense.forward(x));              // [b, t, intermediate]

    public Tensor Activate(Tensor x) => act(x);
}

public sealed class ViTOutput : nn.Module<Tensor, Tensor>
{
    public readonly AdaptableLinear dense;

    public ViTOutput(VitConfig config) : base(nameof(ViTOutput))
    {
        dense = new AdaptableLinear(config.IntermediateSize, config.HiddenSize, hasBias: true);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => dense.forward(x);                   // [b, t, hidden]
}
