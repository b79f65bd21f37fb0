using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

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
