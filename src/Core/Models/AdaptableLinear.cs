using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>Something that changes what a linear layer outputs: an adapter method's per-layer part.</summary>
public interface ILinearAdapter
{
    /// <summary>The adapted output, given the layer's input x [.., in] and its frozen output y = W x + b [.., out].</summary>
    Tensor Forward(Tensor x, Tensor y);
}

/// <summary>
/// A linear layer of a base model (parameter names as in Hugging Face: <c>weight</c>, <c>bias</c>) with a slot
/// for an adapter. The adapter is not a registered submodule, so the base model's state dict stays the base's;
/// adapter methods own and save their parameters themselves.
/// </summary>
public sealed class AdaptableLinear : nn.Module<Tensor, Tensor>
{
    public readonly TorchSharp.Modules.Parameter weight;
    public readonly TorchSharp.Modules.Parameter? bias;

    public ILinearAdapter? Adapter { get; set; }
    public long InFeatures => weight.shape[1];
    public long OutFeatures => weight.shape[0];

    public AdaptableLinear(long inFeatures, long outFeatures, bool hasBias = false) : base(nameof(AdaptableLinear))
    {
        weight = new TorchSharp.Modules.Parameter(empty(outFeatures, inFeatures));
        if (hasBias) bias = new TorchSharp.Modules.Parameter(zeros(outFeatures));
        RegisterComponents();
    }

    /// <summary>A layer with no bias whose weight [out, in] is another module's parameter: an output head tied to the token embeddings.</summary>
    public AdaptableLinear(TorchSharp.Modules.Parameter tiedWeight) : base(nameof(AdaptableLinear))
    {
        weight = tiedWeight;
        RegisterComponents();
    }

    /// <summary>
    /// A bfloat16 copy of the frozen weight (and bias) that, while set, computes the layer's matmul: the input is rounded
    /// to bfloat16 and the output returned in the input's type (autocast), the adapter still sees float32. A trainer sets
    /// and disposes it; the weight itself is untouched.
    /// </summary>
    public (Tensor Weight, Tensor? Bias)? LowPrecision { get; set; }

    public override Tensor forward(Tensor x)
    {
        var y = LowPrecision is var (w, b)
            ? nn.functional.linear(x.to_type(w.dtype), w, b).to_type(x.dtype)
            : nn.functional.linear(x, weight, bias);
        return Adapter is null ? y : Adapter.Forward(x, y);
    }
}

public static class AdaptableModules
{
    /// <summary>Every linear layer of a model an adapter can target, by its Hugging Face module path (e.g. <c>model.layers.0.self_attn.q_proj</c>).</summary>
    public static IEnumerable<(string Path, AdaptableLinear Layer)> LinearLayers(this nn.Module model) =>
        model.named_modules().Where(m => m.module is AdaptableLinear).Select(m => (m.name, (AdaptableLinear)m.module));

    /// <summary>Every normalisation layer of a model (LayerNorm, RMSNorm) by its Hugging Face module path (e.g. <c>transformer.h.0.ln_1</c>).</summary>
    public static IEnumerable<(string Path, IAdaptableNorm Layer)> NormLayers(this nn.Module model) =>
        model.named_modules().Where(m => m.module is IAdaptableNorm).Select(m => (m.name, (IAdaptableNorm)m.module));
}
