using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// A normalisation layer of a base model whose elementwise affine part (scale <c>weight</c>, shift <c>bias</c>) an adapter
/// may change, through the same kind of slot as <see cref="AdaptableLinear"/>.
/// </summary>
/// <remarks>
/// The adapter gets the normalised input x̂ (the input of the affine part, not the raw input) and the frozen output
/// y = weight ⊙ x̂ + bias: scale/shift methods such as RLRR's then add δweight ⊙ x̂ + δbias without normalising again.
/// </remarks>
public interface IAdaptableNorm
{
    Parameter Weight { get; }
    /// <summary>The shift; null for RMSNorm, which has none.</summary>
    Parameter? Bias { get; }
    long Size { get; }
    ILinearAdapter? Adapter { get; set; }
    /// <summary>
    /// What the stored weight is offset from: the affine scale is <c>WeightOffset + weight</c> (0 in most families; 1 in
    /// Gemma's RMSNorm, which stores w and scales by 1 + w). Merging a rescaling into the weight needs it.
    /// </summary>
    double WeightOffset => 0;
}

/// <summary>Layer normalisation over the last dimension (parameter names as in Hugging Face: <c>weight</c>, <c>bias</c>).</summary>
public sealed class AdaptableLayerNorm : nn.Module<Tensor, Tensor>, IAdaptableNorm
{
    public readonly Parameter weight, bias;
    readonly double eps;

    public AdaptableLayerNorm(long size, double eps) : base(nameof(AdaptableLayerNorm))
    {
        weight = new Parameter(ones(size));
        bias = new Parameter(zeros(size));
        this.eps = eps;
        RegisterComponents();
    }

    public Parameter Weight => weight;
    public Parameter? Bias => bias;
    public long Size => weight.shape[0];
    public ILinearAdapter? Adapter { get; set; }

    public override Tensor forward(Tensor x)
    {
        if (Adapter is null) return nn.functional.layer_norm(x, [Size], weight, bias, eps);   // fused when nothing adapts it
        var normed = nn.functional.layer_norm(x, [Size], eps: eps);                            // [.., size]
        return Adapter.Forward(normed, normed * weight + bias);                                // [.., size]
    }
}

/// <summary>
/// x / rms(x) ⊙ weight, computed in float32 (Llama's RMSNorm); with <c>offset</c> 1, Gemma's x / rms(x) ⊙ (1 + weight),
/// all of it in float32 before the cast back (transformers' Gemma2RMSNorm/Gemma3RMSNorm), weight starting at 0.
/// </summary>
public sealed class RmsNorm : nn.Module<Tensor, Tensor>, IAdaptableNorm
{
    public readonly Parameter weight;
    readonly double eps, offset;

    public RmsNorm(long size, double eps, double offset = 0) : base(nameof(RmsNorm))
    {
        weight = new Parameter(offset == 0 ? ones(size) : zeros(size));
        (this.eps, this.offset) = (eps, offset);
        RegisterComponents();
    }

    public Parameter Weight => weight;
    public Parameter? Bias => null;
    public long Size => weight.shape[0];
    public ILinearAdapter? Adapter { get; set; }
    public double WeightOffset => offset;

    public override Tensor forward(Tensor x)
    {
        var x32 = x.to_type(ScalarType.Float32);
        var normed32 = x32 * rsqrt(x32.pow(2).mean([-1], keepdim: true) + eps);                     // [.., size]
        if (offset != 0)
        {
            var scaled = (normed32 * (weight.to_type(ScalarType.Float32) + offset)).to_type(x.dtype);  // [.., size]
            return Adapter is null ? scaled : Adapter.Forward(normed32.to_type(x.dtype), scaled);
        }
        var normed = normed32.to_type(x.dtype);                                                    // [.., size]
        var y = weight * normed;                                                                   // [.., size]
        return Adapter is null ? y : Adapter.Forward(normed, y);
    }
}
