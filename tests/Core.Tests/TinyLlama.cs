using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests;

/// <summary>A tiny Llama for fast model tests, and small tensor helpers shared by them.</summary>
static class TinyLlama
{
    public static readonly LlamaConfig Config = new()
    {
        VocabSize = 264, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2,
        NumAttentionHeads = 4, NumKeyValueHeads = 2, MaxPositionEmbeddings = 64,
        RopeTheta = 500,   // not the default 10000, so a model that ignores the config's theta is caught
    };

    /// <summary>A frozen model in eval mode with seeded random weights; norm weights differ from 1 so they matter.</summary>
    public static LlamaForCausalLM Create(long seed = 1, LlamaConfig? config = null)
    {
        var model = (LlamaForCausalLM)(config ?? Config).CreateModel();   // the config's family (Phi-3's fused layers, ...)
        using var g = new Generator((ulong)seed);
        using (no_grad())
        using (NewDisposeScope())
            foreach (var (name, p) in model.named_parameters())
            {
                if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.uniform_(0.5, 1.5, g);
                else if (name == "model.embed_tokens.weight") p.normal_(0, 1, g);
                else p.normal_(0, 1 / Math.Sqrt(p.shape[1]), g);
            }
        foreach (var p in model.parameters()) p.requires_grad = false;
        model.eval();
        return model;
    }

    /// <summary>Random token ids [batch, length].</summary>
    public static Tensor Ids(long batch, long length, long seed)
    {
        using var g = new Generator((ulong)seed);
        return randint(0, Config.VocabSize, [batch, length], ScalarType.Int64, generator: g);
    }

    /// <summary>Gives every A and B of the adapter seeded random values (B starts at zero, which hides mistakes).</summary>
    public static void Randomize(TrainableAdapter adapter, long seed)
    {
        using var g = new Generator((ulong)seed);
        using (no_grad())
        using (NewDisposeScope())
            foreach (var p in adapter.Parameters()) p.normal_(0, 0.3, g);
    }

    /// <summary>Detaches every adapter slot of the model.</summary>
    public static void ClearAdapters(LlamaForCausalLM model)
    {
        foreach (var (_, layer) in model.LinearLayers()) layer.Adapter = null;
    }

    public static void AssertClose(Tensor expected, Tensor actual, double tolerance)
    {
        Assert.Equal(expected.shape, actual.shape);
        double diff = (expected.to_type(ScalarType.Float64) - actual.to_type(ScalarType.Float64)).abs().max().item<double>();
        Assert.True(diff <= tolerance, $"max |difference| {diff:G3} exceeds {tolerance:G3}");
    }

    public static byte[] Bytes(Tensor t) => t.detach().contiguous().bytes.ToArray();
}
