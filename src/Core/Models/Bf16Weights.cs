using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// The bfloat16 copies of a model's frozen linear weights, owned by the model they copy: every trainer that computes in
/// bf16 takes them, the first one makes them and the last one to let go frees them, since fused jobs share one model and
/// join and leave at will.
/// </summary>
public sealed class Bf16Weights(nn.Module model)
{
    readonly object gate = new();
    int users;

    /// <summary>One more trainer computes with the copies (made now if it is the first).</summary>
    public void Take()
    {
        lock (gate)
            if (++users == 1) Set(on: true);
    }

    /// <summary>One trainer less (the copies are freed with the last).</summary>
    public void Release()
    {
        lock (gate)
            if (--users == 0) Set(on: false);
    }

    void Set(bool on)
    {
        using var noGrad = no_grad();
        foreach (var (_, layer) in model.LinearLayers())
        {
            if (layer.LowPrecision is var (w, b)) { w.Dispose(); b?.Dispose(); }
            layer.LowPrecision = on
                ? (layer.weight.to_type(ScalarType.BFloat16).DetachFromDisposeScope(), layer.bias?.to_type(ScalarType.BFloat16).DetachFromDisposeScope())
                : null;
        }
    }
}
