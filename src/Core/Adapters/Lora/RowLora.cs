using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// LoRA for a batch whose rows each use their own adapter (or none): the rows' A and B are gathered once, already
/// transposed for the matmuls, into Aᵀ [batch, in, r_max] and Bᵀ [batch, r_max, out] (zero-padded to the largest rank,
/// scaling folded into B, zeros for rows without an adapter) and applied with two batched matmuls, so one forward pass
/// serves every row. Gathering in the transposed layout keeps each step free of copies. DoRA rows add a per-row output
/// scale g: y' = g ⊙ (y − b + ΔW x) + b, with g = 1 for every other row.
/// </summary>
public sealed class RowLora : ILinearAdapter, IDisposable
{
    readonly Tensor aT, bT;   // [batch, in, r_max], [batch, r_max, out]
    readonly Tensor? g, bias; // [batch, 1, out], [out]

    /// <summary>Rows' LoRA weights; DoRA rows' magnitudes m turn into g with the layer's frozen <paramref name="weight"/>.</summary>
    public RowLora(IReadOnlyList<LoraWeights?> rows, long inFeatures, long outFeatures, Tensor? weight = null, Tensor? bias = null)
    {
        long rank = Math.Max(1, rows.Max(r => r?.A.shape[0] ?? 0));
        aT = zeros(rows.Count, inFeatures, rank);
        bT = zeros(rows.Count, rank, outFeatures);
        using var scope = NewDisposeScope();   // frees the views and scaled copies below (callers may have no scope)
        using (no_grad())
            for (int i = 0; i < rows.Count; i++)
                if (rows[i] is { } w)
                {
                    long r = w.A.shape[0];
                    aT[i].narrow(1, 0, r).copy_(w.A.t());
                    bT[i].narrow(0, 0, r).copy_(w.B.t() * w.Scaling);
                }
        if (rows.Any(r => r?.Magnitude is not null))
        {
            var scales = rows.Select(r => r?.Magnitude is null ? ones(outFeatures)
                : r.OutputScale ??= Dora.OutputScale(weight!, r.A, r.B, r.Scaling, r.Magnitude).DetachFromDisposeScope()).ToArray();
            g = stack(scales).unsqueeze(1).MoveToOuterDisposeScope();                            // [batch, 1, out]
            this.bias = bias;
        }
    }

    public Tensor Forward(Tensor x, Tensor y)                         // x [batch, seq, in], y [batch, seq, out]
    {
        var delta = x.bmm(aT).bmm(bT);                                // [batch, seq, r] -> [batch, seq, out]
        if (g is null) return y + delta;
        return bias is null ? g * (y + delta) : g * (y - bias + delta) + bias;
    }

    /// <summary>Keeps the gathered weights beyond the dispose scope they were made in (reused over many steps).</summary>
    public void DetachFromScope() { aT.DetachFromDisposeScope(); bT.DetachFromDisposeScope(); g?.DetachFromDisposeScope(); }

    public void Dispose() { aT.Dispose(); bT.Dispose(); g?.Dispose(); }
}
