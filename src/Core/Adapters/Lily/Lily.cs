using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// Lily (Low-Rank Interconnected Adaptation across Layers, https://arxiv.org/abs/2407.09946): per target layer a local low-dimension projector LP, high-dimension projector experts HP shared by
/// every layer of the same module type, and a router over the experts, shared like the HPs (the paper's Alg. 1 keeps it
/// in the global HP module):
/// x' = x P_L (Eq. 3), W_R = softmax(x' Rᵀ) (Eq. 3), P'_H = Σᵢ W_Rⁱ P_Hⁱ (Eq. 4), Δ = s · x' P'_H (Eq. 5, 7, 8).
/// The paper averages W_R over the batch and the tokens; here each sequence averages its own tokens, with the causal
/// prefix mean (tokens ≤ t) for causal LMs, so a row never depends on its batchmates and cached decoding equals the
/// full forward (router_mean "batch" keeps the paper's mean for training).
/// </summary>
public static class Lily
{
    /// <summary>
    /// Δ for inputs x [n, t, in]. The weights are either one adapter's or, with a leading dimension n, one per row
    /// (a batch of rows of different Lily adapters in one set of batched matmuls).
    /// </summary>
    /// <param name="x">Inputs [n, t, in].</param>
    /// <param name="lpT">P_L transposed: [in, d] or [n, in, d].</param>
    /// <param name="routerT">Rᵀ: [d, N_e] or [n, d, N_e]; null for monoscale (the experts summed).</param>
    /// <param name="hp">The experts stacked as PEFT's lily_B: [(N_e·d), out] or [n, (N_e·d), out].</param>
    /// <param name="scaling">s.</param>
    /// <param name="mean">"sequence" or "batch" (see <see cref="LilyConfig.RouterMean"/>).</param>
    /// <param name="causal">Whether a token may only see the router weights of the tokens before it.</param>
    /// <param name="state">Sums of earlier tokens' router weights and their count per sequence [n, N_e + 1], or null.</param>
    /// <param name="routerWeights">The mean router weights of this call [N_e], for statistics.</param>
    public static Tensor Delta(Tensor x, Tensor lpT, Tensor? routerT, Tensor hp, double scaling, string mean, bool causal,
        RowState? state, out Tensor? routerWeights)
    {
        long n = x.shape[0], t = x.shape[1], d = lpT.shape[^1], experts = hp.shape[^2] / d, outFeatures = hp.shape[^1];
        var rows = hp.shape[..^2];                                                             // [] or [n]
        var h = x.matmul(lpT);                                                               // x' = x P_L        [n, t, d]
        routerWeights = null;
        if (routerT is null)                                                                 // Σᵢ P_Hⁱ (monoscale)
            return h.matmul(hp.view([.. rows, experts, d, outFeatures]).sum(dim: -3)) * scaling;
        var p = nn.functional.softmax(h.matmul(routerT), -1);                               // W_R per token     [n, t, e]
        routerWeights = p.detach().mean([0, 1]);                                            // [e]
        if (mean == "batch")                                                                 // P'_H = Σᵢ W_Rⁱ P_Hⁱ [d, out]
            return h.matmul(p.mean([0, 1]).matmul(hp.view(experts, d * outFeatures)).view(d, outFeatures)) * scaling;
        Tensor w;
        if (!causal) w = p.mean([1], keepdim: true);                                        // [n, 1, e]
        else
        {
            var sums = p.cumsum(1);                                                          // Σ_{τ≤t} W_R      [n, t, e]
            var counts = arange(1, t + 1, ScalarType.Float32).view(1, t, 1);                 // [1, t, 1]
            if (state is not null)
            {
                var earlier = state.Read();                                                  // [n, e + 1]
                sums = sums + earlier.narrow(1, 0, experts).unsqueeze(1);
                counts = counts + earlier.narrow(1, experts, 1).unsqueeze(1);
                var real = state.Valid?.to_type(ScalarType.Float32).unsqueeze(-1) ?? ones(n, t, 1);   // padding adds nothing [n, t, 1]
                state.Write(cat([earlier.narrow(1, 0, experts) + (p * real).sum(dim: 1), earlier.narrow(1, experts, 1) + real.sum(dim: 1)], 1));
                state.KeepRunning(cat([sums, counts.expand(n, t, 1)], 2));                      // the state after each token [n, t, e + 1]
            }
            w = sums / counts;                                                               // prefix mean      [n, t, e]
        }
        var mixed = (w.unsqueeze(-1) * h.unsqueeze(-2)).view(n, -1, experts * d);           // W_Rⁱ x'          [n, t, e·d]
        return mixed.matmul(hp) * scaling;                                                   // x' P'_H · s       [n, t, out]
    }
}

/// <summary>One target layer's Lily: its own LP (<c>lily_A</c>) and its module type's shared experts and router.</summary>
public sealed class LilyLayer : nn.Module<Tensor, Tensor>, ILinearAdapter, IDropoutLayer
{
    public readonly Linear lily_A;
    readonly LilyGroup group;
    readonly LilyConfig config;

    public Generator? DropoutGenerator { get; set; }
    /// <summary>The router weights of the last forward call [N_e] (null for monoscale).</summary>
    public Tensor? LastRouterWeights { get; private set; }

    public LilyLayer(long inFeatures, LilyGroup group, LilyConfig config, Generator? init) : base(nameof(LilyLayer))
    {
        (this.group, this.config) = (group, config);
        lily_A = nn.Linear(inFeatures, group.Rank, hasBias: false);
        using (no_grad()) lily_A.weight!.uniform_(-1 / Math.Sqrt(inFeatures), 1 / Math.Sqrt(inFeatures), init);   // PyTorch's Linear default
        RegisterComponents();
        eval();
    }

    public LilyGroup Group => group;

    public override Tensor forward(Tensor x) => throw new NotSupportedException("Lily adapts a layer's output: call Forward(x, y)");

    public Tensor Forward(Tensor x, Tensor y)
    {
        var dx = SeededDropout.Apply(x, config.Dropout, training, DropoutGenerator);
        var delta = Lily.Delta(dx, lily_A.weight!.t(), group.Router?.t(), group.Experts, config.Scaling, training ? config.RouterMean : "sequence",
            config.Causal, null, out var weights);
        LastRouterWeights?.Dispose();
        LastRouterWeights = weights?.DetachFromDisposeScope();
        return y + delta;
    }
}

/// <summary>The parameters one module type shares: the HP experts [(N_e·d), out] (zeros) and the router [N_e, d] (N(1, 0.01), Alg. 1).</summary>
public sealed class LilyGroup : IDisposable
{
    public Parameter Experts { get; }
    public Parameter? Router { get; }
    public int Rank { get; }

    public LilyGroup(int rank, int experts, long outFeatures, bool monoscale, Generator? init)
    {
        Rank = rank;
        Experts = new Parameter(zeros(experts * rank, outFeatures));
        if (!monoscale) Router = new Parameter(empty(experts, rank).normal_(1.0, 0.01, init));
    }

    public void Dispose() { Experts.Dispose(); Router?.Dispose(); }
}
