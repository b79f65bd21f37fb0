using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// The row adapters of one forward call over a batch whose rows each use their own adapter (or none), put into the
/// model's slots: a <see cref="RowAdapter"/> on every adapted linear layer, a <see cref="RowFeedForward"/> on every
/// replaced feed-forward block, a <see cref="RowNorm"/> on every rescaled norm. Disposed with the call unless kept.
/// </summary>
public sealed class RowAdapters : IDisposable
{
    public List<RowAdapter> Layers { get; } = [];
    public List<RowFeedForward> Blocks { get; } = [];
    public List<RowNorm> Norms { get; } = [];
    readonly List<Action> attach = [];   // puts each into its model slot (again)
    bool kept;

    /// <param name="model">The base model, its slots empty.</param>
    /// <param name="adapters">Each row's adapter (or null).</param>
    /// <param name="slots">Each row's slot in the <paramref name="states"/> stores.</param>
    /// <param name="states">Per-sequence state stores of the batch by layer path and width (made on first use), or null for none.</param>
    /// <param name="valid">[rows, t]: the real tokens of right-padded rows, or null when all are.</param>
    /// <param name="marks">Positions whose running state the call keeps (the prefix cache's block ends), or null.</param>
    public static RowAdapters Attach(nn.Module model, IReadOnlyList<ServedAdapter?> adapters, IReadOnlyList<long> slots,
        Func<string, int, Tensor>? states, Tensor? valid = null, StateMarks? marks = null)
    {
        var set = new RowAdapters();
        if (adapters.All(a => a is null)) return set;
        foreach (var (path, layer) in model.LinearLayers())
        {
            var rowAdapter = new RowAdapter(path, layer, adapters, slots, states, valid, marks);
            if (rowAdapter.IsEmpty)
            {
                rowAdapter.Dispose();
                continue;
            }
            set.attach.Add(() => layer.Adapter = rowAdapter);
            set.Layers.Add(rowAdapter);
        }
        foreach (var (path, feedForward) in model.FeedForwardBlocks())
            if (RowFeedForward.For(path, adapters) is { } block)
            {
                set.attach.Add(() => feedForward.Adapter = block);
                set.Blocks.Add(block);
            }
        foreach (var (path, norm) in model.NormLayers())
            if (RowNorm.For(path, norm.Size, adapters) is { } rowNorm)
            {
                set.attach.Add(() => norm.Adapter = rowNorm);
                set.Norms.Add(rowNorm);
            }
        set.Reattach();
        return set;
    }

    /// <summary>Puts the adapters back into the model's slots (after another forward call used them).</summary>
    public void Reattach()
    {
        foreach (var put in attach) put();
    }

    /// <summary>Keeps the adapters for the next steps (the rows stay the same).</summary>
    public void Keep()
    {
        kept = true;
        foreach (var l in Layers) l.DetachFromScope();
    }

    public void Dispose() => Dispose(false);

    /// <summary>Frees the adapters unless kept, or always when <paramref name="evenIfKept"/>.</summary>
    public void Dispose(bool evenIfKept)
    {
        if (kept && !evenIfKept) return;
        foreach (var l in Layers) l.Dispose();
        foreach (var b in Blocks) b.Dispose();
        foreach (var n in Norms) n.Dispose();
    }
}

/// <summary>
/// The running per-sequence state a forward call keeps at some of its positions (Lily's router sums at the prefix cache's
/// block ends): positions [rows, m] in the call (−1: none), and each stateful layer's state after those tokens, by layer
/// path and width, [rows, m, width] (rows whose adapter keeps no state there stay zero).
/// </summary>
public sealed class StateMarks(Tensor positions)
{
    public Tensor Positions { get; } = positions;
    public Dictionary<(string Path, int Width), Tensor> Kept { get; } = [];

    internal void Keep(string path, int width, Tensor rows, Tensor running)
    {
        if (!Kept.TryGetValue((path, width), out var all))
            Kept[(path, width)] = all = zeros([Positions.shape[0], Positions.shape[1], width], device: running.device);
        all.index_copy_(0, rows, running);
    }
}
