using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// A per-sequence rule on which tokens may come next, such as a grammar compiled from a JSON schema: the hook for
/// constrained decoding. One instance per generated sequence (from <see cref="GenerationRequest.Constraint"/>); called
/// on the inference thread only.
/// </summary>
public interface ILogitsConstraint
{
    /// <summary>Sets the logits [vocab] of the tokens not allowed next to −∞, in place. To end the sequence, allow only end ids.</summary>
    void Mask(Tensor logits);

    /// <summary>Moves past <paramref name="token"/>, the token just sampled (an end id included).</summary>
    void Advance(int token);
}
