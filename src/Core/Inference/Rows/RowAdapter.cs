using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

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
    /// <param name="marks">Positions whose running state the call keeps, or null.</param>
    public RowAdapter(string path, AdaptableLinear layer, IReadOnlyList<ServedAdapter?> rows, IReadOnlyList<long> slots, Func<string, int, Tensor>? states,
        Tensor? valid = null, StateMarks? marks = null)
    {
        var device = layer.weight!.device;
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
            var rowIndex = tensor(index.Select(i => (long)i).ToArray(), device: device).DetachFromDisposeScope();
            int width = delta.StateWidth;
            var state = width > 0 && states is not null
                ? new RowState(states(path, width), tensor(index.Select(i => slots[i]).ToArray(), device: device).DetachFromDisposeScope(),
                    valid?.index_select(0, rowIndex).DetachFromDisposeScope())
                {
                    KeepAt = marks?.Positions.index_select(0, rowIndex).DetachFromDisposeScope(),
                    Keep = marks is null ? null : running => marks.Keep(path, width, rowIndex, running),
                }
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
