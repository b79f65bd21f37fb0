using System.Text.Json.Serialization;
using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>Lily's options; the file is PEFT's Lily format (<c>peft_type: LILY</c>) plus our router options.</summary>
public sealed record LilyConfig : AdapterConfig
{
    public const string Type = "LILY";
    public override string PeftType { get; init; } = Type;
    /// <summary>d, the low dimension of each layer's projector LP.</summary>
    [JsonPropertyName("r")] public int Rank { get; init; } = 8;
    /// <summary>LPs per module type: always one per layer here (the paper's Lily), written for PEFT.</summary>
    [JsonPropertyName("num_A")] public int? NumA { get; init; }
    /// <summary>N_e, the HP experts shared by all layers of a module type.</summary>
    [JsonPropertyName("num_B")] public int NumExperts { get; init; } = 4;
    /// <summary>s, the scaling of the update.</summary>
    [JsonPropertyName("lily_scaling")] public double Scaling { get; init; } = 1.0;
    [JsonPropertyName("lily_dropout")] public double Dropout { get; init; }
    /// <summary>d per module name where it differs from r (e.g. a larger d for the FFN's layers).</summary>
    [JsonPropertyName("rank_pattern")] public Dictionary<string, int>? RankPattern { get; init; }
    /// <summary>"sequence" (each sequence its own router mean: the causal prefix mean for causal LMs) or "batch" (the paper's mean over batch and tokens; training only).</summary>
    [JsonPropertyName("router_mean")] public string RouterMean { get; init; } = "sequence";
    /// <summary>The paper's ablation without router: the experts are summed.</summary>
    [JsonPropertyName("monoscale")] public bool Monoscale { get; init; }

    public override string Method => "lily";

    public int RankOf(string path) =>
        RankPattern?.FirstOrDefault(p => path == p.Key || path.EndsWith("." + p.Key, StringComparison.Ordinal)).Value is > 0 and var d ? d : Rank;

    public override void Validate()
    {
        if (Rank is < 1 or > 1024) throw new ArgumentException("r must be between 1 and 1024");
        if (NumExperts is < 1 or > 64) throw new ArgumentException("num_B must be between 1 and 64");
        if (!double.IsFinite(Scaling)) throw new ArgumentException("lily_scaling must be a number");
        if (Dropout is < 0 or >= 1) throw new ArgumentException("lily_dropout must be in [0, 1)");
        if (RouterMean is not ("sequence" or "batch")) throw new ArgumentException("router_mean must be \"sequence\" or \"batch\"");
        if (RankPattern?.Values.Any(d => d is < 1 or > 1024) == true) throw new ArgumentException("rank_pattern values must be between 1 and 1024");
    }
}

/// <summary>
/// Lily (paper 000): per target layer a local low-dimension projector LP, high-dimension projector experts HP shared by
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

/// <summary>A Lily adapter; its file is PEFT's Lily layout, each layer's keys holding its LP and its type's shared HP and router.</summary>
public sealed class LilyAdapter : TrainableAdapter
{
    readonly LilyConfig config;
    readonly Dictionary<string, nn.Module> layers;
    readonly List<LilyGroup> groups;

    LilyAdapter(LilyConfig config, Dictionary<string, nn.Module> layers, List<LilyGroup> groups) => (this.config, this.layers, this.groups) = (config, layers, groups);

    public override AdapterConfig Config => config;
    public override IReadOnlyDictionary<string, nn.Module> Layers => layers;
    /// <summary>No: its router averages over a sequence (or the batch).</summary>
    public override bool TokenWise => false;

    /// <summary>Module type of a layer: its name and shape, as PEFT groups shared Lily parts.</summary>
    static (string, long, long, int) TypeOf(string path, AdaptableLinear layer, LilyConfig config) =>
        (path.Split('.')[^1], layer.InFeatures, layer.OutFeatures, config.RankOf(path));

    public static LilyAdapter Create(nn.Module model, LilyConfig config, Generator? init)
    {
        var targets = TargetModules.Find(model, config.TargetModules);
        var groups = targets.Select(t => TypeOf(t.Path, t.Layer, config)).Distinct()
            .ToDictionary(k => k, k => new LilyGroup(k.Item4, config.NumExperts, k.Item3, config.Monoscale, init));
        var layers = targets.ToDictionary(t => t.Path, t => (nn.Module)new LilyLayer(t.Layer.InFeatures, groups[TypeOf(t.Path, t.Layer, config)], config, init));
        return new(config with { NumA = targets.Count / groups.Count }, layers, groups.Values.ToList());
    }

    public override IEnumerable<(string Key, Parameter Value)> NamedParameters()
    {
        foreach (var (path, module) in layers)
        {
            var layer = (LilyLayer)module;
            yield return ($"{path}.lily_A.weight", layer.lily_A.weight!);
            yield return ($"{path}.lily_B.weight", layer.Group.Experts);
            if (layer.Group.Router is { } router) yield return ($"{path}.lily_router.weight", router);
        }
    }

    /// <summary>Each layer's mean router weights in the last step, rounded (the job's events show how layers mix the experts).</summary>
    public override object? Statistics() => config.Monoscale ? null : new Dictionary<string, object>
    {
        ["lily_router_weights"] = layers.Where(l => ((LilyLayer)l.Value).LastRouterWeights is not null).ToDictionary(
            l => l.Key, l => ((LilyLayer)l.Value).LastRouterWeights!.data<float>().Select(w => Math.Round(w, 4)).ToArray()),
    };

    public static Dictionary<string, IRowDelta> LoadServed(LilyConfig config, Dictionary<string, Tensor> tensors, IReadOnlyDictionary<string, (long In, long Out)> layers)
    {
        var result = new Dictionary<string, IRowDelta>();
        foreach (var (key, lp) in tensors)
        {
            if (!key.EndsWith(".lily_A.weight", StringComparison.Ordinal)) continue;
            string path = key[..^".lily_A.weight".Length];
            if (!layers.TryGetValue(path, out var layer)) throw new InvalidDataException($"{key}: the base model has no linear layer {path}");
            long d = lp.shape.Length == 2 ? lp.shape[0] : -1;
            if (lp.ndim != 2 || lp.shape[1] != layer.In) throw new InvalidDataException($"{key}: shape [{string.Join(",", lp.shape)}] does not fit layer {path} (in {layer.In})");
            var hp = tensors.GetValueOrDefault($"{path}.lily_B.weight") ?? throw new InvalidDataException($"{key}: its lily_B is missing");
            if (hp.ndim != 2 || hp.shape[0] != config.NumExperts * d || hp.shape[1] != layer.Out)
                throw new InvalidDataException($"{path}.lily_B.weight: shape [{string.Join(",", hp.shape)}], expected [{config.NumExperts * d},{layer.Out}] (num_B · r, out)");
            var router = config.Monoscale ? null : tensors.GetValueOrDefault($"{path}.lily_router.weight") ?? throw new InvalidDataException($"{key}: its lily_router is missing");
            if (router is not null && (router.ndim != 2 || router.shape[0] != config.NumExperts || router.shape[1] != d))
                throw new InvalidDataException($"{path}.lily_router.weight: shape [{string.Join(",", router.shape)}], expected [{config.NumExperts},{d}]");
            using var scope = NewDisposeScope();   // frees the transposed views; the copies kept are detached from it
            result[path] = new ServedLily(lp.t().contiguous().DetachFromDisposeScope(), router?.t().contiguous().DetachFromDisposeScope(),
                (hp * config.Scaling).DetachFromDisposeScope(), config.Causal);
        }
        if (result.Count == 0) throw new InvalidDataException($"{WeightsFileName} holds no Lily weights");
        return result;
    }

    public override void Dispose()
    {
        base.Dispose();
        foreach (var g in groups) g.Dispose();
    }

    /// <summary>One Lily layer as served, or (weights with a leading row dimension) the Lily rows of a batch stacked; s folded into P_H.</summary>
    sealed class ServedLily(Tensor lpT, Tensor? routerT, Tensor hp, bool causal) : IRowDelta
    {
        Tensor LpT { get; } = lpT;
        Tensor? RouterT { get; } = routerT;
        Tensor Hp { get; } = hp;
        bool Causal { get; } = causal;

        public int StateWidth => Causal && RouterT is not null ? (int)RouterT.shape[^1] + 1 : 0;
        public IEnumerable<Tensor> Tensors => RouterT is null ? [LpT, Hp] : [LpT, RouterT, Hp];
        public object BatchKey => (nameof(Lily), LpT.shape[^1], Hp.shape[^2], RouterT is null, Causal);

        public Tensor Apply(Tensor x, Tensor y, AdaptableLinear layer, RowState? state) =>
            y + Lily.Delta(x, LpT, RouterT, Hp, 1.0, "sequence", Causal, state, out _);

        public IRowDelta Stack(IReadOnlyList<IRowDelta> rows)
        {
            var lily = rows.Cast<ServedLily>().ToList();
            return new ServedLily(stack(lily.Select(l => l.LpT)), RouterT is null ? null : stack(lily.Select(l => l.RouterT!)), stack(lily.Select(l => l.Hp)), Causal);
        }

        public void Dispose() { foreach (var t in Tensors) t.Dispose(); }
    }
}
