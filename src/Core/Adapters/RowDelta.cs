using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

// What a method's served form implements so that the per-row mechanics of serving (src/Core/Inference/Rows) can batch
// it with other rows; here, below Inference in Core's layering, because each method's folder implements them.

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

    /// <summary>
    /// [n, m]: positions of this call whose running state (the state after that token) the caller keeps (the prefix
    /// cache's block ends); −1 for none. Null: none kept.
    /// </summary>
    public Tensor? KeepAt { get; init; }
    /// <summary>Receives the running states at <see cref="KeepAt"/>, [n, m, width].</summary>
    public Action<Tensor>? Keep { get; init; }

    /// <summary>Hands the running states [n, t, width] at <see cref="KeepAt"/> to <see cref="Keep"/> (when asked for).</summary>
    public void KeepRunning(Tensor running)
    {
        if (KeepAt is not { } at || Keep is null) return;
        long n = running.shape[0], m = at.shape[1], width = running.shape[2];
        Keep(running.gather(1, at.clamp_min(0).unsqueeze(-1).expand(n, m, width)));
    }

    /// <summary>Frees the row indices (the store belongs to the batch).</summary>
    public void Dispose() { Slots.Dispose(); Valid?.Dispose(); KeepAt?.Dispose(); }
}

/// <summary>A feed-forward block as a method replaces it (MixLoRA), applied to the rows that use its adapter.</summary>
public interface IRowBlock : IDisposable
{
    /// <summary>The block's output for rows x [n, seq, hidden], computed with the frozen <paramref name="block"/>.</summary>
    Tensor Forward(Tensor x, IFeedForward block);

    /// <summary>The tensors it holds (freed with it).</summary>
    IEnumerable<Tensor> Tensors { get; }

    long Bytes => Tensors.Sum(t => t.numel() * 4);
}
