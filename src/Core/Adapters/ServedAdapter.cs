using AdapterService.Core.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// A trained adapter's weights as the inference engine serves them, whatever its method: LoRA and DoRA layers as
/// <see cref="LoraWeights"/> (gathered per row into one batched matmul), every other method's layers as an
/// <see cref="IRowDelta"/> applied to the rows that use it.
/// </summary>
public sealed record ServedAdapter : IDisposable
{
    public required AdapterConfig Config { get; init; }
    public IReadOnlyDictionary<string, LoraWeights> Lora { get; init; } = new Dictionary<string, LoraWeights>();
    public IReadOnlyDictionary<string, IRowDelta> Deltas { get; init; } = new Dictionary<string, IRowDelta>();
    /// <summary>Feed-forward blocks the method replaces, by block path (MixLoRA).</summary>
    public IReadOnlyDictionary<string, ServedMixLora> Blocks { get; init; } = new Dictionary<string, ServedMixLora>();
    /// <summary>Norm layers' output rescaling y + s ⊙ y + f, by norm path (RLRR).</summary>
    public IReadOnlyDictionary<string, (Tensor Scale, Tensor Shift)> Norms { get; init; } = new Dictionary<string, (Tensor, Tensor)>();
    /// <summary>An image classifier's own classifier (weight [labels, hidden], bias [labels]) for <see cref="AdapterConfig.Labels"/>, or null.</summary>
    public (Tensor Weight, Tensor Bias)? Head { get; init; }

    public long Bytes => Lora.Values.Sum(w => w.Bytes) + Deltas.Values.Sum(d => d.Bytes) + Blocks.Values.Sum(b => b.Bytes)
                         + Norms.Values.Sum(n => 8 * n.Scale.numel())
                         + (Head is { } h ? 4 * (h.Weight.numel() + h.Bias.numel()) : 0);

    /// <summary>Trained parameters, each shared tensor once (Lily's files repeat a module type's experts, and ours its router, under every layer).</summary>
    public long ParameterCount { get; private init; }

    /// <summary>Reads an adapter folder of any method, checked against the model's layers.</summary>
    public static ServedAdapter Load(string folder, nn.Module model) =>
        Load(folder, model.LinearLayers().Select(l => (l.Path, l.Layer.InFeatures, l.Layer.OutFeatures)), model.NormLayers().Select(n => (n.Path, n.Layer.Size)));

    /// <summary>Reads an adapter folder of any method, checked against the layers a base model's config describes.</summary>
    public static ServedAdapter Load(string folder, ModelConfig baseModel) => Load(folder, baseModel.LinearShapes(), baseModel.NormShapes());

    /// <summary>Reads an adapter folder of any method, checked against the base model's linear layers (path, in, out) and norms (path, size).</summary>
    public static ServedAdapter Load(string folder, IEnumerable<(string Path, long In, long Out)> linearLayers, IEnumerable<(string Path, long Size)> normLayers)
    {
        var config = AdapterConfig.Load(folder);
        var layers = linearLayers.ToDictionary(l => l.Path, l => (l.In, l.Out));
        var tensors = TrainableAdapter.ReadWeights(folder);
        var kept = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        try
        {
            long parameterCount = CountParameters(tensors);
            (Tensor Weight, Tensor Bias)? head = config.Labels is { } labels ? FindHead(tensors, labels.Count, layers) : null;
            var methodTensors = head is null ? tensors
                : tensors.Where(t => t.Key is not (TrainableAdapter.HeadWeightKey or TrainableAdapter.HeadBiasKey)).ToDictionary();
            var served = config switch
            {
                LoraConfig lora => new ServedAdapter { Config = config, Lora = LoraAdapter.LoadServed(lora, methodTensors, layers) },
                LilyConfig lily => new ServedAdapter { Config = config, Deltas = LilyAdapter.LoadServed(lily, methodTensors, layers) },
                RlrrConfig rlrr => new ServedAdapter
                {
                    Config = config, Deltas = RlrrAdapter.LoadServed(rlrr, methodTensors, layers),
                    Norms = RlrrAdapter.LoadServedNorms(methodTensors, normLayers.ToDictionary(n => n.Path, n => n.Size)),
                },
                MixLoraConfig mix => MixLoraAdapter.LoadServed(mix, methodTensors, layers) is var (blocks, lora)
                    ? new ServedAdapter { Config = config, Blocks = blocks, Lora = lora } : null!,
                _ => throw new InvalidDataException($"{config.Method} adapters cannot be served"),
            };
            served = served with { Head = head, ParameterCount = parameterCount };
            if (head is { } h) kept.UnionWith([h.Weight, h.Bias]);
            foreach (var w in served.Lora.Values) kept.UnionWith([w.A, w.B, .. w.Magnitude is null ? [] : new[] { w.Magnitude }]);
            foreach (var d in served.Deltas.Values) kept.UnionWith(d.Tensors);
            foreach (var b in served.Blocks.Values) kept.UnionWith(b.Tensors);
            foreach (var (scale, shift) in served.Norms.Values) kept.UnionWith([scale, shift]);
            return served;
        }
        finally
        {
            foreach (var t in tensors.Values.Where(t => !kept.Contains(t))) t.Dispose();
        }
    }

    /// <summary>The adapter's own classifier in <paramref name="tensors"/>, checked against its labels and the base's hidden size.</summary>
    static (Tensor Weight, Tensor Bias) FindHead(Dictionary<string, Tensor> tensors, int labels, Dictionary<string, (long In, long Out)> layers)
    {
        if (!layers.TryGetValue("classifier", out var baseHead)) throw new InvalidDataException("the adapter has labels, but its base model has no classifier");
        if (!tensors.TryGetValue(TrainableAdapter.HeadWeightKey, out var weight) || !tensors.TryGetValue(TrainableAdapter.HeadBiasKey, out var bias))
            throw new InvalidDataException($"the adapter has labels, but {TrainableAdapter.WeightsFileName} has no {TrainableAdapter.HeadWeightKey} and {TrainableAdapter.HeadBiasKey}");
        if (!weight.shape.SequenceEqual([labels, baseHead.In]) || !bias.shape.SequenceEqual([(long)labels]))
            throw new InvalidDataException(
                $"the classifier is [{string.Join(", ", weight.shape)}] + [{string.Join(", ", bias.shape)}]; {labels} labels on this base need [{labels}, {baseHead.In}] + [{labels}]");
        return (weight, bias);
    }

    static long CountParameters(Dictionary<string, Tensor> tensors)
    {
        var seen = new HashSet<string>();
        long count = 0;
        foreach (var (key, t) in tensors)
        {
            bool maybeShared = key.EndsWith(".lily_B.weight", StringComparison.Ordinal) || key.EndsWith(".lily_router.weight", StringComparison.Ordinal);
            using var contiguous = t.contiguous();
            if (!maybeShared || seen.Add($"{key.Split('.')[^2]}:{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(contiguous.bytes))}"))
                count += t.numel();
        }
        return count;
    }

    public void Dispose()
    {
        foreach (var w in Lora.Values) w.Dispose();
        foreach (var d in Deltas.Values) d.Dispose();
        foreach (var b in Blocks.Values) b.Dispose();
        foreach (var (scale, shift) in Norms.Values) { scale.Dispose(); shift.Dispose(); }
        if (Head is { } h) { h.Weight.Dispose(); h.Bias.Dispose(); }
    }
}

/// <summary>One layer of a non-LoRA method, applied to the rows of a batch that use its adapter.</summary>
public interface IRowDelta : IDisposable
{
    /// <summary>The adapted output for rows x [n, seq, in] whose frozen output is y [n, seq, out].</summary>
    Tensor Apply(Tensor x, Tensor y, AdaptableLinear layer, RowState? state);

    /// <summary>Floats of per-sequence state the method carries from one forward call to the next (0 for none).</summary>
    int StateWidth { get; }

    /// <summary>Layers with equal keys (method and shapes) can be stacked into one batched delta.</summary>
    object BatchKey { get; }

    /// <summary>One delta for a batch's rows of these layers (one per row, in row order), their weights stacked.</summary>
    IRowDelta Stack(IReadOnlyList<IRowDelta> rows);

    /// <summary>The tensors it holds (freed with it).</summary>
    IEnumerable<Tensor> Tensors { get; }

    long Bytes => Tensors.Sum(t => t.numel() * 4);
}

/// <summary>
/// The running state of some sequences in a store of [slots, width] that outlives forward calls (Lily's prefix sums,
/// kept per sequence like its KV cache). Null state means a forward call sees whole sequences from their start.
/// <see cref="Valid"/> [n, t] marks the real tokens of right-padded rows (null: all are), so padding never enters the state.
/// </summary>
public sealed class RowState(Tensor store, Tensor slots, Tensor? valid = null) : IDisposable
{
    public Tensor? Valid { get; } = valid;
    public Tensor Read() => store.index_select(0, Slots);                                    // [n, width]
    public void Write(Tensor value) => store.index_copy_(0, Slots, value);
    Tensor Slots { get; } = slots;

    /// <summary>Frees the row indices (the store belongs to the batch).</summary>
    public void Dispose() { Slots.Dispose(); Valid?.Dispose(); }
}

/// <summary>
/// One linear layer's adapters for a batch whose rows each use their own adapter (or none): LoRA and DoRA rows through
/// one gathered <see cref="RowLora"/>, then the rows of every other method, their layers stacked per method and shape
/// into one batched <see cref="IRowDelta"/> (so 32 Lily adapters cost one set of batched matmuls, not 32).
/// </summary>
public sealed class RowAdapter : ILinearAdapter, IDisposable
{
    readonly AdaptableLinear layer;
    readonly RowLora? lora;
    readonly List<(Tensor Rows, IRowDelta Delta, RowState? State)> groups = [];

    /// <param name="path">The layer's module path.</param>
    /// <param name="layer">The base layer.</param>
    /// <param name="rows">Each row's adapter (or null).</param>
    /// <param name="slots">Each row's slot in <paramref name="states"/>.</param>
    /// <param name="states">Per-sequence state stores of this batch by key (made on first use), or null for none.</param>
    /// <param name="valid">[rows, t]: the real tokens of right-padded rows (a batched prefill), or null when all are.</param>
    public RowAdapter(string path, AdaptableLinear layer, IReadOnlyList<ServedAdapter?> rows, IReadOnlyList<long> slots, Func<string, int, Tensor>? states,
        Tensor? valid = null)
    {
        this.layer = layer;
        var loraRows = rows.Select(r => r?.Lora.GetValueOrDefault(path)).ToList();
        if (loraRows.Any(w => w is not null))
            lora = new RowLora(loraRows, layer.InFeatures, layer.OutFeatures, layer.weight, layer.bias);
        using var scope = NewDisposeScope();   // frees the stacking's temporaries; what the groups keep is detached from it
        foreach (var group in Enumerable.Range(0, rows.Count).Where(i => rows[i]?.Deltas.ContainsKey(path) == true).GroupBy(i => rows[i]!.Deltas[path].BatchKey))
        {
            var index = group.ToArray();
            var members = index.Select(i => rows[i]!.Deltas[path]).ToList();
            var delta = members[0].Stack(members);
            foreach (var t in delta.Tensors) t.DetachFromDisposeScope();
            var rowIndex = tensor(index.Select(i => (long)i).ToArray()).DetachFromDisposeScope();
            var state = delta.StateWidth > 0 && states is not null
                ? new RowState(states(path, delta.StateWidth), tensor(index.Select(i => slots[i]).ToArray()).DetachFromDisposeScope(),
                    valid?.index_select(0, rowIndex).DetachFromDisposeScope())
                : null;
            groups.Add((rowIndex, delta, state));
        }
    }

    public bool IsEmpty => lora is null && groups.Count == 0;

    public Tensor Forward(Tensor x, Tensor y)                                                 // x [rows, seq, in], y [rows, seq, out]
    {
        var result = lora?.Forward(x, y) ?? y;
        foreach (var (rows, delta, state) in groups)
            result = result.index_copy(0, rows, delta.Apply(x.index_select(0, rows), y.index_select(0, rows), layer, state));
        return result;
    }

    public void DetachFromScope() => lora?.DetachFromScope();

    public void Dispose()
    {
        lora?.Dispose();
        foreach (var g in groups)
        {
            g.Rows.Dispose();
            g.Delta.Dispose();   // the stacked copy; the adapters' own layers stay in the cache
            g.State?.Dispose();
        }
    }
}

/// <summary>
/// A feed-forward block for a batch whose rows use their own adapters: the block runs as usual (with the row adapters
/// of its linear layers), then the rows of each adapter that replaces the block (MixLoRA) get that adapter's output.
/// </summary>
public sealed class RowFeedForward(List<(Tensor Rows, ServedMixLora Block)> groups) : IFeedForwardAdapter, IDisposable
{
    public Tensor Forward(Tensor x, IFeedForward block)                                      // x [rows, seq, hidden]
    {
        var result = block.Compute(x, (_, layer, input) => layer.forward(input));              // as usual, with the projections' own row adapters
        foreach (var (rows, served) in groups)
            result = result.index_copy(0, rows, served.Forward(x.index_select(0, rows), block));
        return result;
    }

    /// <summary>The block adapter for <paramref name="rows"/> at block <paramref name="path"/>, or null when no row replaces it.</summary>
    public static RowFeedForward? For(string path, IReadOnlyList<ServedAdapter?> rows)
    {
        var groups = Enumerable.Range(0, rows.Count).Where(i => rows[i]?.Blocks.ContainsKey(path) == true).GroupBy(i => rows[i]!)
            .Select(g => (tensor(g.Select(i => (long)i).ToArray()).DetachFromDisposeScope(), g.Key.Blocks[path])).ToList();
        return groups.Count == 0 ? null : new RowFeedForward(groups);
    }

    public void Dispose() { foreach (var g in groups) g.Rows.Dispose(); }
}

/// <summary>
/// A norm layer's output rescaling for a batch whose rows use their own adapters: each row's s and f gathered once
/// into [rows, 1, size] (zeros for rows whose adapter leaves the norm alone), y' = y + s ⊙ y + f in one pass.
/// </summary>
public sealed class RowNorm : ILinearAdapter, IDisposable
{
    readonly Tensor scale, shift;   // [rows, 1, size]

    RowNorm(Tensor scale, Tensor shift) => (this.scale, this.shift) = (scale, shift);

    /// <summary>The rescaling of norm <paramref name="path"/> for <paramref name="rows"/>, or null when no row adapts it.</summary>
    public static RowNorm? For(string path, long size, IReadOnlyList<ServedAdapter?> rows)
    {
        if (rows.All(r => r?.Norms.ContainsKey(path) != true)) return null;
        using var scope = NewDisposeScope();
        var scale = stack(rows.Select(r => r?.Norms.GetValueOrDefault(path).Scale ?? zeros(size))).unsqueeze(1);
        var shift = stack(rows.Select(r => r?.Norms.GetValueOrDefault(path).Shift ?? zeros(size))).unsqueeze(1);
        return new RowNorm(scale.DetachFromDisposeScope(), shift.DetachFromDisposeScope());
    }

    public Tensor Forward(Tensor x, Tensor y) => y + scale * y + shift;

    public void Dispose() { scale.Dispose(); shift.Dispose(); }
}
