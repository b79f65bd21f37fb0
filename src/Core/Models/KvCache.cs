using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>Where attention keeps the keys and values of positions already seen.</summary>
public interface IKvCache
{
    /// <summary>Stores this step's keys/values [batch, kv_heads, new, head_dim] for one layer; returns all keys/values to attend to.</summary>
    (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v);
}

/// <summary>Keys and values of one growing sequence (or equal-length batch), per layer: [batch, kv_heads, length, head_dim].</summary>
public sealed class KvCache : IKvCache, IDisposable
{
    readonly Tensor?[] keys, values;

    public KvCache(int layers) { keys = new Tensor?[layers]; values = new Tensor?[layers]; }

    /// <summary>Number of positions cached.</summary>
    public long Length => keys[0]?.shape[2] ?? 0;

    /// <summary>Appends this step's keys/values for one layer and returns all of them.</summary>
    public (Tensor K, Tensor V) Append(int layer, Tensor k, Tensor v)
    {
        var (oldK, oldV) = (keys[layer], values[layer]);
        var newK = oldK is null ? k.detach() : cat([oldK, k], 2);
        var newV = oldV is null ? v.detach() : cat([oldV, v], 2);
        // The cache outlives the dispose scope of the step that made it.
        keys[layer] = newK.DetachFromDisposeScope();
        values[layer] = newV.DetachFromDisposeScope();
        oldK?.Dispose();
        oldV?.Dispose();
        return (newK, newV);
    }

    public void Dispose()
    {
        foreach (var t in keys.Concat(values)) t?.Dispose();
    }
}
