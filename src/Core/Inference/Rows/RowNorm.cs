using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// A norm layer's output rescaling (RLRR's, the one method that adapts norms) for a batch whose rows use their own
/// adapters: each row's s and f gathered once into [rows, 1, size] (zeros for rows whose adapter leaves the norm alone),
/// y' = y + s ⊙ y + f in one pass.
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

    public Tensor Forward(Tensor x, Tensor y) => Rlrr.RescaleNorm(y, scale, shift);

    public void Dispose() { scale.Dispose(); shift.Dispose(); }
}
