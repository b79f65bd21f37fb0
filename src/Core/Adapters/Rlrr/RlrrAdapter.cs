using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// An RLRR adapter over the target linear layers (keys <c>{path}.rlrr_s_left</c>, <c>rlrr_s_right</c>, <c>rlrr_f</c>)
/// and, with <c>layer_norms</c>, every norm layer (<c>{path}.rlrr_scale</c>, <c>rlrr_shift</c>).
/// </summary>
public sealed class RlrrAdapter : TrainableAdapter<RlrrConfig>
{
    RlrrAdapter(RlrrConfig config, Dictionary<string, nn.Module> layers) : base(config, layers) { }

    public static RlrrAdapter Create(nn.Module model, RlrrConfig config, Generator? init)
    {
        var layers = TargetModules.Find(model, config.TargetModules).ToDictionary(t => t.Path, t => (nn.Module)new RlrrLayer(t.Layer, config.Rank, init));
        if (config.LayerNorms)
            foreach (var (path, norm) in model.NormLayers()) layers[path] = new RlrrNormLayer(norm.Size);
        return new(config, layers);
    }

    public override IEnumerable<(string Key, Parameter Value)> NamedParameters()
    {
        foreach (var (path, module) in layers)
            if (module is RlrrLayer l)
            {
                yield return ($"{path}.rlrr_s_left", l.rlrr_s_left);
                yield return ($"{path}.rlrr_s_right", l.rlrr_s_right);
                yield return ($"{path}.rlrr_f", l.rlrr_f);
            }
            else
            {
                var n = (RlrrNormLayer)module;
                yield return ($"{path}.rlrr_scale", n.rlrr_scale);
                yield return ($"{path}.rlrr_shift", n.rlrr_shift);
            }
    }

    /// <summary>
    /// Folds the rescaling into the model's weights (Eq. 20: W ← (1 + S_left S_rightᵀ) ⊙ W) and the shift into the bias
    /// (b ← b + f; a layer without a bias gets <see cref="BiasShift"/>, one vector add), and each norm's s and f into its
    /// weight and bias (w ← (1 + s) ⊙ w, b ← (1 + s) ⊙ b + f). The adapter's own layers are
    /// taken out of the slots, so the model then runs as a plain base model with new weights.
    /// </summary>
    public override void Merge(nn.Module model) => Fold(model, undo: false);

    /// <summary>
    /// Undoes <see cref="Merge"/>: W ← W / (1 + S_left S_rightᵀ), b ← b − f (norms: w ← w / (1 + s), b ← (b − f) / (1 + s)); to the
    /// rounding of the weights' type (a bf16 base does not come back bit for bit).
    /// </summary>
    public void Unmerge(nn.Module model) => Fold(model, undo: true);

    void Fold(nn.Module model, bool undo)
    {
        var slots = model.LinearLayers().ToDictionary(l => l.Path, l => l.Layer);
        var norms = model.NormLayers().ToDictionary(n => n.Path, n => n.Layer);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        foreach (var (path, module) in layers)
            if (module is RlrrLayer l)
            {
                var target = slots[path];
                var factor = Rlrr.Rescaling(l.rlrr_s_left, l.rlrr_s_right) + 1;        // 1 + S_left S_rightᵀ [out, in]
                if (undo) { target.weight.div_(factor); target.bias?.sub_(l.rlrr_f); target.Adapter = null; }
                else
                {
                    target.weight.mul_(factor);
                    if (target.bias is { } bias) { bias.add_(l.rlrr_f); target.Adapter = null; }
                    else target.Adapter = new BiasShift(l.rlrr_f.detach().clone().DetachFromDisposeScope());
                }
            }
            else
            {
                var n = (RlrrNormLayer)module;
                var norm = norms[path];
                var factor = n.rlrr_scale + 1;                                                 // (1 + s) ⊙ (w ⊙ x̂ + b) + f
                // Gemma's norms scale by 1 + w: the product applies to that effective scale, w ← (1 + s)(1 + w) − 1.
                double offset = norm.WeightOffset;
                if (undo) { norm.Weight.add_(offset).div_(factor).sub_(offset); norm.Bias?.sub_(n.rlrr_shift).div_(factor); norm.Adapter = null; }
                else
                {
                    norm.Weight.add_(offset).mul_(factor).sub_(offset);
                    if (norm.Bias is { } bias) { bias.mul_(factor).add_(n.rlrr_shift); norm.Adapter = null; }
                    else norm.Adapter = new BiasShift(n.rlrr_shift.detach().clone().DetachFromDisposeScope());
                }
            }
    }

    /// <summary>Each norm's (s, f) as served, checked against the model's norms (path → size).</summary>
    public static Dictionary<string, (Tensor Scale, Tensor Shift)> LoadServedNorms(Dictionary<string, Tensor> tensors, IReadOnlyDictionary<string, long> norms)
    {
        var result = new Dictionary<string, (Tensor, Tensor)>();
        foreach (var (key, scale) in tensors)
        {
            if (!key.EndsWith(".rlrr_scale", StringComparison.Ordinal)) continue;
            string path = key[..^".rlrr_scale".Length];
            if (!norms.TryGetValue(path, out var size)) throw new InvalidDataException($"{key}: the base model has no norm layer {path}");
            var shift = tensors.GetValueOrDefault($"{path}.rlrr_shift") ?? throw new InvalidDataException($"{key}: its rlrr_shift is missing");
            if (scale.ndim != 1 || scale.shape[0] != size || shift.ndim != 1 || shift.shape[0] != size)
                throw new InvalidDataException($"{path}: RLRR norm shapes [{string.Join(",", scale.shape)}] and [{string.Join(",", shift.shape)}] do not fit its size {size}");
            result[path] = (scale, shift);
        }
        return result;
    }

    public static Dictionary<string, IRowDelta> LoadServed(RlrrConfig config, Dictionary<string, Tensor> tensors, IReadOnlyDictionary<string, (long In, long Out)> layers)
    {
        var result = new Dictionary<string, IRowDelta>();
        foreach (var (key, sLeft) in tensors)
        {
            if (!key.EndsWith(".rlrr_s_left", StringComparison.Ordinal)) continue;
            string path = key[..^".rlrr_s_left".Length];
            if (!layers.TryGetValue(path, out var layer)) throw new InvalidDataException($"{key}: the base model has no linear layer {path}");
            var sRight = tensors.GetValueOrDefault($"{path}.rlrr_s_right") ?? throw new InvalidDataException($"{key}: its rlrr_s_right is missing");
            var f = tensors.GetValueOrDefault($"{path}.rlrr_f") ?? throw new InvalidDataException($"{key}: its rlrr_f is missing");
            if (sLeft.ndim != 2 || sLeft.shape[0] != config.Rank || sLeft.shape[1] != layer.In
                || sRight.ndim != 2 || sRight.shape[0] != config.Rank || sRight.shape[1] != layer.Out || f.ndim != 1 || f.shape[0] != layer.Out)
                throw new InvalidDataException($"{path}: RLRR shapes s_left [{string.Join(",", sLeft.shape)}] s_right [{string.Join(",", sRight.shape)}] f [{string.Join(",", f.shape)}] do not fit layer {path} ({layer.In} → {layer.Out}, r = {config.Rank})");
            result[path] = new ServedRlrr(sLeft, sRight, f);
        }
        if (result.Count == 0) throw new InvalidDataException($"{WeightsFileName} holds no RLRR weights");
        return result;
    }

    /// <summary>One RLRR layer as served, or the RLRR rows of a batch stacked ([n, 1, r, in], [n, 1, r, out], [n, 1, out]).</summary>
    sealed class ServedRlrr(Tensor sLeft, Tensor sRight, Tensor f) : IRowDelta
    {
        Tensor SLeft { get; } = sLeft;
        Tensor SRight { get; } = sRight;
        Tensor F { get; } = f;

        public int StateWidth => 0;
        public IEnumerable<Tensor> Tensors => [SLeft, SRight, F];
        public object BatchKey => (nameof(Rlrr), SLeft.shape[^2]);

        public Tensor Apply(Tensor x, Tensor y, AdaptableLinear layer, RowState? state) =>
            y + Rlrr.Delta(x, layer, SLeft, SRight) + F;

        public IRowDelta Stack(IReadOnlyList<IRowDelta> rows)
        {
            var rlrr = rows.Cast<ServedRlrr>().ToList();
            return new ServedRlrr(stack(rlrr.Select(r => r.SLeft)).unsqueeze(1), stack(rlrr.Select(r => r.SRight)).unsqueeze(1), stack(rlrr.Select(r => r.F)).unsqueeze(1));
        }

        public void Dispose() { foreach (var t in Tensors) t.Dispose(); }
    }
}
