using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// A transformer block's feed-forward network (Llama's SwiGLU, GPT-2's and ViT's GELU MLP) with a slot for an adapter
/// that replaces its computation (MixLoRA's experts).
/// </summary>
public interface IFeedForward
{
    IFeedForwardAdapter? Adapter { get; set; }

    /// <summary>Its projections by name relative to the block (e.g. <c>gate_proj</c>, or ViT's <c>intermediate.dense</c>), in order.</summary>
    IReadOnlyList<(string Name, AdaptableLinear Layer)> Projections { get; }

    /// <summary>The network's function of x [.., hidden] with each projection computed by <paramref name="project"/> (given its name, layer and input).</summary>
    Tensor Compute(Tensor x, Func<string, AdaptableLinear, Tensor, Tensor> project);
}

/// <summary>Something that computes a feed-forward network's output in its place.</summary>
public interface IFeedForwardAdapter
{
    Tensor Forward(Tensor x, IFeedForward block);
}

public static class FeedForwards
{
    /// <summary>Every feed-forward network of a model by module path (e.g. <c>model.layers.0.mlp</c>).</summary>
    public static IEnumerable<(string Path, IFeedForward Block)> FeedForwardBlocks(this TorchSharp.torch.nn.Module model) =>
        model.named_modules().Where(m => m.module is IFeedForward).Select(m => (m.name, (IFeedForward)m.module));

    /// <summary>A projection as the frozen model computes it (W x + b), bypassing the layer's adapter slot.</summary>
    public static Tensor Frozen(AdaptableLinear layer, Tensor x) => layer.Frozen(x);
}
