using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// Preallocated keys and values for a running batch: per layer [slots, kv_heads, max_length, head_dim], on the model's
/// device. A running sequence owns one slot for its whole life; the running rows are always slots 0..rows-1 (a finished
/// row's slot is refilled by moving the last row into it), so a decode step attends over a plain view, with no gather.
/// A prompt chunk (chunked prefill, or a whole prompt) writes positions [offset, offset + length) of any slot.
/// </summary>
public sealed class SlotKvCache : IKvCache, IDisposable
{
    readonly Tensor[] keys, values;
    long rows;                // decode: the forward call's rows, slots [0, rows)
    Tensor? decodeIndex;      // [rows, kv_heads, 1, head_dim]: where each row's new position goes
    (long Slot, long Offset, long Length)[]? chunks;   // chunk call: each row's slot and positions
    Tensor? chunkSlots;       // [rows]: the chunk rows' slots, to gather their keys
    long visible;             // positions the call attends over

    public int Slots { get; }
    public int MaxLength { get; }
    public Device Device { get; }

    public SlotKvCache(CausalLanguageModel model, int slots, int maxLength)
    {
        (Slots, MaxLength) = (slots, maxLength);
        Device = model.parameters().First().device;
        keys = new Tensor[model.NumLayers];
        values = new Tensor[model.NumLayers];
        for (int i = 0; i < keys.Length; i++)
        {
            keys[i] = zeros(slots, model.KeyValueHeads, maxLength, model.HeadDim, device: Device).DetachFromDisposeScope();
            values[i] = zeros(slots, model.KeyValueHeads, maxLength, model.HeadDim, device: Device).DetachFromDisposeScope();
        }
    }

    /// <summary>Bytes of keys and values per cached position (all layers).</summary>
    public long BytesPerPosition => keys.Sum(k => k.shape[1] * k.shape[3] * k.element_size()) * 2;

    /// <summary>
    /// The next forward call [chunks.Length, t] writes, for each row i, positions [Offset, Offset + Length) of slot
    /// <c>Slot</c> (its first Length tokens; the rest is padding) and attends over each row's slot up to the longest end.
    /// </summary>
    public void BeginChunks((long Slot, long Offset, long Length)[] rowChunks)
    {
        (chunks, decodeIndex) = (rowChunks, null);
        chunkSlots = tensor(rowChunks.Select(c => c.Slot).ToArray(), device: Device);
        visible = rowChunks.Max(c => c.Offset + c.Length);
    }

    /// <summary>The next forward call writes a whole prompt of <paramref name="length"/> positions into <paramref name="slotIndex"/>.</summary>
    public void BeginPrefill(int slotIndex, long length) => BeginChunks([(slotIndex, 0, length)]);

    /// <summary>The next forward call writes <paramref name="count"/> prompts, right-padded to <paramref name="length"/>, into slots from <paramref name="firstSlot"/> on.</summary>
    public void BeginPrefill(int firstSlot, int count, long length) =>
        BeginChunks([.. Enumerable.Range(firstSlot, count).Select(slot => ((long)slot, 0L, length))]);

    /// <summary>The next forward call adds one position to each of slots [0, lengths.Length), after its <c>lengths[i]</c> cached ones.</summary>
    public void BeginDecode(Tensor lengths)
    {
        rows = lengths.shape[0];
        var k = keys[0];
        decodeIndex = lengths.view(rows, 1, 1, 1).expand(rows, k.shape[1], 1, k.shape[3]);
        visible = lengths.max().item<long>() + 1;
        chunks = null;
    }

    public (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v)
    {
        if (chunks is { } rowChunks)
        {
            for (int i = 0; i < rowChunks.Length; i++)
            {
                var (slot, offset, length) = rowChunks[i];
                keys[layer][slot].narrow(1, offset, length).copy_(k[i].narrow(1, 0, length));
                values[layer][slot].narrow(1, offset, length).copy_(v[i].narrow(1, 0, length));
            }
            return (keys[layer].index_select(0, chunkSlots!).narrow(2, 0, visible), values[layer].index_select(0, chunkSlots!).narrow(2, 0, visible));
        }
        var (layerKeys, layerValues) = (keys[layer].narrow(0, 0, rows), values[layer].narrow(0, 0, rows));
        layerKeys.scatter_(2, decodeIndex!, k);
        layerValues.scatter_(2, decodeIndex!, v);
        return (layerKeys.narrow(2, 0, visible), layerValues.narrow(2, 0, visible));
    }

    /// <summary>Copies the first <paramref name="length"/> positions of one slot into another.</summary>
    public void Move(int from, int to, long length)
    {
        for (int i = 0; i < keys.Length; i++)
        {
            keys[i][to].narrow(1, 0, length).copy_(keys[i][from].narrow(1, 0, length));
            values[i][to].narrow(1, 0, length).copy_(values[i][from].narrow(1, 0, length));
        }
    }

    /// <summary>Copies of positions [start, start + length) of a slot, per layer: keys then values [kv_heads, length, head_dim] each.</summary>
    public (Tensor[] Keys, Tensor[] Values) Read(int slot, long start, long length) =>
        (keys.Select(k => k[slot].narrow(1, start, length).clone()).ToArray(), values.Select(v => v[slot].narrow(1, start, length).clone()).ToArray());

    /// <summary>Writes per-layer keys and values [kv_heads, length, head_dim] into positions from <paramref name="start"/> of a slot.</summary>
    public void Write(int slot, long start, IReadOnlyList<Tensor> layerKeys, IReadOnlyList<Tensor> layerValues)
    {
        for (int i = 0; i < keys.Length; i++)
        {
            keys[i][slot].narrow(1, start, layerKeys[i].shape[1]).copy_(layerKeys[i]);
            values[i][slot].narrow(1, start, layerValues[i].shape[1]).copy_(layerValues[i]);
        }
    }

    public void Dispose()
    {
        foreach (var t in keys.Concat(values)) t.Dispose();
    }
}
