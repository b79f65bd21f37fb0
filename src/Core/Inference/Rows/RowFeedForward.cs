using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// A feed-forward block for a batch whose rows use their own adapters: the block runs as usual (with the row adapters
/// of its linear layers), then the rows of each adapter that replaces the block (MixLoRA) get that adapter's output.
/// </summary>
public sealed class RowFeedForward(List<(Tensor Rows, IRowBlock Block)> groups) : IFeedForwardAdapter, IDisposable
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
