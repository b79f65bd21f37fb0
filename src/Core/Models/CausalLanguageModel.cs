using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// A decoder-only language model of any family: what the trainer and the inference engine need, so neither
/// depends on Llama or GPT-2.
/// </summary>
public abstract class CausalLanguageModel : nn.Module<Tensor, Tensor>
{
    protected CausalLanguageModel(string name) : base(name) { }

    public abstract int VocabSize { get; }
    /// <summary>The most positions a sequence may have (prompt and generated tokens together).</summary>
    public abstract int ContextLength { get; }
    public abstract int? BosTokenId { get; }
    /// <summary>Every token id that ends a sequence (Llama 3 Instruct models have several); empty when the config names none.</summary>
    public abstract IReadOnlyList<int> EosTokenIds { get; }
    public int? EosTokenId => EosTokenIds.Count > 0 ? EosTokenIds[0] : null;

    /// <summary>Layers, key/value heads and head size: the shape of a KV cache for this model.</summary>
    public abstract int NumLayers { get; }
    public abstract int KeyValueHeads { get; }
    public abstract int HeadDim { get; }

    /// <summary>
    /// Whether a position's rotation depends on how many positions its forward call holds (dynamic NTK and LongRoPE scale
    /// by the call's length): then a prompt fed in pieces is not the prompt fed whole, so the engine never splits its
    /// prompts nor reuses cached prefixes.
    /// </summary>
    public virtual bool PositionsDependOnLength => false;

    /// <summary>Logits [batch, seq, vocab] for token ids [batch, seq], all positions new.</summary>
    public override Tensor forward(Tensor inputIds) => Forward(inputIds, null);

    /// <summary>Logits for the new token ids [batch, seq]; with a cache, positions continue after the cached ones.</summary>
    public Tensor Forward(Tensor inputIds, KvCache? cache)
    {
        long past = cache?.Length ?? 0, length = inputIds.shape[1];
        var positions = arange(past, past + length, ScalarType.Int64).unsqueeze(0);              // [1, seq]
        // Causal mask over [new positions, all positions]; a single new token may see everything.
        var mask = length == 1 ? null : ones(length, past + length, ScalarType.Bool).tril(past);
        return Forward(inputIds, positions, mask, cache);
    }

    /// <summary>
    /// Logits for token ids [batch, seq] at the given positions [batch or 1, seq], attending where
    /// <paramref name="mask"/> (broadcastable to [batch, heads, seq, keys], true = attend) allows, over the keys the cache returns.
    /// </summary>
    public abstract Tensor Forward(Tensor inputIds, Tensor positions, Tensor? mask, IKvCache? cache);

    /// <summary>
    /// The same computation as <see cref="Forward(Tensor, Tensor, Tensor?, IKvCache?)"/> without a cache, cut into a chain:
    /// the input of the first block (the embeddings, [batch, seq, hidden]), the blocks that follow (the decoder layers, each
    /// [batch, seq, hidden] → same) and the head (final norm and output projection, [.., hidden] → [.., vocab], per token).
    /// A trainer computes the head only where a target is trained; gradient checkpointing keeps only the blocks' inputs.
    /// </summary>
    public abstract (Tensor Input, IReadOnlyList<Func<Tensor, Tensor>> Blocks, Func<Tensor, Tensor> Head) Chain(Tensor inputIds, Tensor positions, Tensor? mask);
}
