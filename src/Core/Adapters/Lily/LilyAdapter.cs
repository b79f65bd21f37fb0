using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>A Lily adapter; its file is PEFT's Lily layout, each layer's keys holding its LP and its type's shared HP and router.</summary>
public sealed class LilyAdapter : TrainableAdapter<LilyConfig>
{
    readonly List<LilyGroup> groups;

    LilyAdapter(LilyConfig config, Dictionary<string, nn.Module> layers, List<LilyGroup> groups) : base(config, layers) => this.groups = groups;

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
