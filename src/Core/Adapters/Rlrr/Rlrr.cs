using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// RLRR (Low-Rank Rescaled Vision Transformer Fine-Tuning: A Residual Design Approach, https://arxiv.org/abs/2403.19067), residual-based low-rank rescaling of a frozen linear layer (Eq. 16, rank r as in its appendix):
/// W' = W + (S_left S_rightᵀ) ⊙ W and b' = b + f. In the paper's X W layout S_left scales W's input side and
/// S_right its output side; in our [out, in] weights ΔW[o, i] = Σₖ S_right[k, o] S_left[k, i] W[o, i].
/// Initialisation (the paper does not spell it out): S_left = 0, S_right ~ N(1, 0.02), f = 0, so training starts at the
/// base model and S_left gets gradient at once (as LoRA's zero B). Merges into W and b exactly (Eq. 20).
/// </summary>
public sealed class RlrrLayer : nn.Module<Tensor, Tensor>, ILinearAdapter
{
    public readonly Parameter rlrr_s_left, rlrr_s_right, rlrr_f;   // [r, in], [r, out], [out]
    readonly FrozenLayer frozen;

    public RlrrLayer(AdaptableLinear layer, int rank, Generator? init) : base(nameof(RlrrLayer))
    {
        frozen = new FrozenLayer(layer);
        rlrr_s_left = new Parameter(zeros(rank, layer.InFeatures));
        rlrr_s_right = new Parameter(empty(rank, layer.OutFeatures).normal_(1.0, 0.02, init));
        rlrr_f = new Parameter(zeros(layer.OutFeatures));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("RLRR adapts a layer's output: call Forward(x, y)");

    /// <summary>y + x ((S_left S_rightᵀ) ⊙ W) + f (Eq. 16, with y = x W + b).</summary>
    public Tensor Forward(Tensor x, Tensor y) =>
        y + nn.functional.linear(x, Rlrr.DeltaWeight(frozen.Layer.weight, rlrr_s_left, rlrr_s_right)) + rlrr_f;
}

public static class Rlrr
{
    /// <summary>The rescaling S_rightᵀ S_left [out, in] (the paper's S_left S_rightᵀ in its X W layout).</summary>
    public static Tensor Rescaling(Tensor sLeft, Tensor sRight) => sRight.t().matmul(sLeft);

    /// <summary>ΔW = (S_rightᵀ S_left) ⊙ W [out, in].</summary>
    public static Tensor DeltaWeight(Tensor weight, Tensor sLeft, Tensor sRight) => Rescaling(sLeft, sRight) * weight;

    /// <summary>A norm's output rescaled and shifted in RLRR's residual form, y' = y + s ⊙ y + f (training and serving alike).</summary>
    public static Tensor RescaleNorm(Tensor y, Tensor scale, Tensor shift) => y + scale * y + shift;

    /// <summary>
    /// The same update without forming ΔW, for serving many adapters over one W:
    /// x ΔWᵀ = Σₖ S_right[k] ⊙ (W (S_left[k] ⊙ x)), one extra pass through W per rank. S_left [r, in] and S_right [r, out]
    /// are one adapter's, or [n, 1, r, in] and [n, 1, r, out] for rows x [n, t, in] of different adapters.
    /// </summary>
    public static Tensor Delta(Tensor x, AdaptableLinear layer, Tensor sLeft, Tensor sRight)
    {
        var scaled = x.unsqueeze(-2) * sLeft;                                                 // S_left[k] ⊙ x         [.., r, in]
        return (layer.Frozen(scaled, withBias: false) * sRight).sum(dim: -2);                 // Σₖ S_right[k] ⊙ W(..) [.., out]
    }
}

/// <summary>
/// RLRR on a norm layer, as the paper does for LayerNorm (following SSF), in RLRR's residual form:
/// y' = y + s ⊙ y + f with y the norm's output, s and f starting at zero. Merges into the norm's weight and bias.
/// </summary>
public sealed class RlrrNormLayer : nn.Module<Tensor, Tensor>, ILinearAdapter
{
    public readonly Parameter rlrr_scale, rlrr_shift;   // [size] each

    public RlrrNormLayer(long size) : base(nameof(RlrrNormLayer))
    {
        rlrr_scale = new Parameter(zeros(size));
        rlrr_shift = new Parameter(zeros(size));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("RLRR adapts a norm's output: call Forward(x, y)");

    public Tensor Forward(Tensor x, Tensor y) => Rlrr.RescaleNorm(y, rlrr_scale, rlrr_shift);
}

/// <summary>A merged RLRR shift f on a layer that has no bias of its own.</summary>
public sealed class BiasShift(Tensor shift) : ILinearAdapter
{
    public Tensor Forward(Tensor x, Tensor y) => y + shift;
}
