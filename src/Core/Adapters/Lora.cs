using TorchSharp;
using TorchSharp.Modules;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// LoRA on one linear layer (Hu et al.; PEFT semantics): h = W x + (alpha / r) · B A dropout(x),
/// A [r, in] Kaiming-uniform, B [out, r] zeros, so the adapted model starts equal to the base.
/// </summary>
public sealed class LoraLayer : nn.Module<Tensor, Tensor>, ILinearAdapter, IDropoutLayer
{
    public readonly Linear lora_A, lora_B;
    readonly double dropout, scaling;

    /// <summary>Draws the dropout masks in training; a generator of the trainer's, so no other thread can shift them.</summary>
    public Generator? DropoutGenerator { get; set; }

    /// <summary>A layer of shape in → out; A drawn from <paramref name="init"/> (the global generator when null), B zero.</summary>
    public LoraLayer(long inFeatures, long outFeatures, LoraConfig config, Generator? init = null) : base(nameof(LoraLayer))
    {
        lora_A = nn.Linear(inFeatures, config.Rank, hasBias: false);
        lora_B = nn.Linear(config.Rank, outFeatures, hasBias: false);
        using (no_grad())
        {
            // Kaiming-uniform with a = sqrt(5), as PEFT: bound = sqrt(6 / ((1 + a²) · fan_in)) = 1 / sqrt(fan_in).
            double bound = 1 / Math.Sqrt(inFeatures);
            lora_A.weight!.uniform_(-bound, bound, init);
            lora_B.weight!.zero_();
        }
        (dropout, scaling) = (config.Dropout, config.Scaling);
        RegisterComponents();
        eval();   // dropout only once a trainer switches training on
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("LoRA adapts a layer's output: call Forward(x, y)");

    public Tensor Forward(Tensor x, Tensor y)
    {
        var dx = SeededDropout.Apply(x, dropout, training, DropoutGenerator);                  // [.., in]
        // Scaling the rank-r intermediate and adding y in place into B's fresh output spares two passes (and a temporary) over [.., out].
        return lora_B.forward(lora_A.forward(dx) * scaling).add_(y);                             // [.., out]
    }

    public LoraWeights Weights() => new(lora_A.weight!, lora_B.weight!, scaling);
}

/// <summary>
/// A trained LoRA pair for one layer, as served: A [r, in], B [out, r], scaling; for DoRA also the output scale
/// g = m / ‖W + scaling·B A‖ per output feature [out] (constant once trained, so DoRA serves as LoRA times g).
/// </summary>
public sealed record LoraWeights(Tensor A, Tensor B, double Scaling, Tensor? Magnitude = null)
{
    /// <summary>DoRA's g for the base layer it serves, worked out on first use (the serving thread's only).</summary>
    public Tensor? OutputScale { get; set; }

    public long Bytes => (A.numel() + B.numel() + 2 * (Magnitude?.numel() ?? 0)) * 4;
    public void Dispose() { A.Dispose(); B.Dispose(); Magnitude?.Dispose(); OutputScale?.Dispose(); }
}

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
