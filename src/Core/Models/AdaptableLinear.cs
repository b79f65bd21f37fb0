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
/// A module whose <c>weight</c> is a frozen base matrix the loader may keep in low precision or map from the file
/// (<see cref="BasePrecision"/>): it computes with it whatever its type and returns float32.
/// </summary>
public interface IStoredMatrix
{
    /// <summary>The module's <c>weight</c>.</summary>
    TorchSharp.Modules.Parameter Matrix { get; }

    /// <summary>Puts <paramref name="stored"/> in the place of the weight (same shape; its type may differ).</summary>
    void ReplaceWeight(TorchSharp.Modules.Parameter stored);
}

/// <summary>
/// A linear layer of a base model (parameter names as in Hugging Face: <c>weight</c>, <c>bias</c>) with a slot
/// for an adapter. The adapter is not a registered submodule, so the base model's state dict stays the base's;
/// adapter methods own and save their parameters themselves.
/// </summary>
/// <remarks>
/// The weight may be bfloat16 (or float16) while everything around it is float32 (<see cref="BasePrecision"/>): the
/// matmul then runs in the weight's type on the input rounded to it, and the output comes back float32 (autocast).
/// The bias stays float32, and the adapter sees float32 input and output either way.
/// </remarks>
public sealed class AdaptableLinear : nn.Module<Tensor, Tensor>, IStoredMatrix
{
    /// <summary>Not readonly only so that the loader can keep it in the file's type, or mapped from the file (<see cref="ReplaceWeight"/>).</summary>
    public TorchSharp.Modules.Parameter weight;
    public readonly TorchSharp.Modules.Parameter? bias;

    public TorchSharp.Modules.Parameter Matrix => weight;
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

    public void ReplaceWeight(TorchSharp.Modules.Parameter stored)
    {
        if (!stored.shape.SequenceEqual(weight.shape)) throw new ArgumentException($"weight [{string.Join(",", stored.shape)}] for a [{string.Join(",", weight.shape)}] layer");
        ConditionallyRegisterParameter(nameof(weight), weight = stored);
    }

    /// <summary>
    /// The frozen layer's W x (+ b with <paramref name="withBias"/>) in <paramref name="x"/>'s type, the matmul in the
    /// weight's type: what every adapter that needs the base's output of some other input calls, never
    /// <c>linear(x, weight)</c> (which fails when the weight is bf16).
    /// </summary>
    public Tensor Frozen(Tensor x, bool withBias = true)
    {
        var b = withBias ? bias : null;
        if (weight.dtype == x.dtype) return nn.functional.linear(x, weight, b);
        // The low-precision copies go at once rather than with the caller's dispose scope (a serving step's ends only after
        // the whole forward pass); autograd keeps what it needs by its own reference.
        using var low = x.to_type(weight.dtype);
        using var product = nn.functional.linear(low, weight);
        if (b is null) return product.to_type(x.dtype);
        using var wide = product.to_type(x.dtype);
        return wide + b;
    }

    public override Tensor forward(Tensor x)
    {
        var y = Frozen(x);
        return Adapter is null ? y : Adapter.Forward(x, y);
    }
}

/// <summary>
/// A lookup table of embeddings [num, dim] (Hugging Face parameter name <c>weight</c>) whose rows come back float32
/// whatever type the table is kept in (<see cref="BasePrecision"/>), so the residual stream starts float32.
/// </summary>
public sealed class EmbeddingTable : nn.Module<Tensor, Tensor>, IStoredMatrix
{
    /// <summary>Not readonly only so that the loader can keep it in the file's type, or mapped from the file (<see cref="ReplaceWeight"/>).</summary>
    public TorchSharp.Modules.Parameter weight;

    public TorchSharp.Modules.Parameter Matrix => weight;

    public EmbeddingTable(long num, long dim) : base(nameof(EmbeddingTable))
    {
        weight = new TorchSharp.Modules.Parameter(empty(num, dim));
        RegisterComponents();
    }

    public void ReplaceWeight(TorchSharp.Modules.Parameter stored)
    {
        if (!stored.shape.SequenceEqual(weight.shape)) throw new ArgumentException($"weight [{string.Join(",", stored.shape)}] for a [{string.Join(",", weight.shape)}] table");
        ConditionallyRegisterParameter(nameof(weight), weight = stored);
    }

    /// <summary>The rows of <paramref name="ids"/> [..] as float32 [.., dim].</summary>
    public override Tensor forward(Tensor ids)
    {
        var rows = weight.index_select(0, ids.reshape(-1)).view([.. ids.shape, weight.shape[1]]);
        return rows.dtype == ScalarType.Float32 ? rows : rows.to_type(ScalarType.Float32);
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
