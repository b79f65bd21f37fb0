using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// Preallocated keys and values for a running batch: per layer [slots, kv_heads, max_length, head_dim]. A sequence
/// owns one slot for its whole life; the running rows are always slots 0..rows-1 (a finished row's slot is refilled
/// by moving the last row into it), so a decode step attends over a plain view, with no gather.
/// </summary>
public sealed class SlotKvCache : IKvCache, IDisposable
{
    readonly Tensor[] keys, values;
    long slot, rows;          // the forward call's rows: one slot (prefill) or slots [0, rows) (decode)
    Tensor? decodeIndex;      // [rows, kv_heads, 1, head_dim]: where each row's new position goes
    long visible;             // positions the call attends over

    public int Slots { get; }
    public int MaxLength { get; }

    public SlotKvCache(CausalLanguageModel model, int slots, int maxLength)
    {
        (Slots, MaxLength) = (slots, maxLength);
        keys = new Tensor[model.NumLayers];
        values = new Tensor[model.NumLayers];
        for (int i = 0; i < keys.Length; i++)
        {
            keys[i] = zeros(slots, model.KeyValueHeads, maxLength, model.HeadDim).DetachFromDisposeScope();
            values[i] = zeros(slots, model.KeyValueHeads, maxLength, model.HeadDim).DetachFromDisposeScope();
        }
    }

    /// <summary>The next forward call writes a whole prompt of <paramref name="length"/> positions into <paramref name="slotIndex"/>.</summary>
    public void BeginPrefill(int slotIndex, long length) => BeginPrefill(slotIndex, 1, length);

    /// <summary>The next forward call writes <paramref name="count"/> prompts, right-padded to <paramref name="length"/>, into slots from <paramref name="firstSlot"/> on.</summary>
    public void BeginPrefill(int firstSlot, int count, long length) => (slot, rows, decodeIndex, visible) = (firstSlot, count, null, length);

    /// <summary>The next forward call adds one position to each of slots [0, lengths.Length), after its <c>lengths[i]</c> cached ones.</summary>
    public void BeginDecode(Tensor lengths)
    {
        rows = lengths.shape[0];
        var k = keys[0];
        decodeIndex = lengths.view(rows, 1, 1, 1).expand(rows, k.shape[1], 1, k.shape[3]);
        visible = lengths.max().item<long>() + 1;
        slot = 0;
    }

    public (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v)
    {
        var (layerKeys, layerValues) = (keys[layer].narrow(0, slot, rows), values[layer].narrow(0, slot, rows));
        if (decodeIndex is null)
        {
            layerKeys.narrow(2, 0, k.shape[2]).copy_(k);
            layerValues.narrow(2, 0, v.shape[2]).copy_(v);
        }
        else
        {
            layerKeys.scatter_(2, decodeIndex, k);
            layerValues.scatter_(2, decodeIndex, v);
        }
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

    public void Dispose()
    {
        foreach (var t in keys.Concat(values)) t.Dispose();
    }
}
