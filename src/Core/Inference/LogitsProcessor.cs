using AdapterService.Core.Inference.Constraints;
using AdapterService.Core.Text;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// A per-sequence rule on which tokens may come next, such as a grammar compiled from a JSON schema: the hook for
/// constrained decoding. One instance per generated sequence (each of <c>n</c> choices gets its own, from
/// <see cref="GenerationRequest.Constraint"/>); called on the inference thread only.
/// </summary>
public interface ILogitsConstraint
{
    /// <summary>
    /// Sets the logits of the tokens not allowed next to −∞, in place, leaving at least one (else the sequence fails).
    /// <paramref name="logits"/>: [vocab], float32, after penalties and bias. To end the sequence, allow only end ids.
    /// </summary>
    void Mask(Tensor logits);

    /// <summary>Moves past <paramref name="token"/>, the token just sampled (an end id included).</summary>
    void Advance(int token);
}

/// <summary>
/// The one logits step of a sequence between the model and <see cref="Sampler"/>, in this order: OpenAI's penalties over the
/// tokens generated so far (logit −= frequency·count + presence·[count &gt; 0]), then <c>logit_bias</c> (added), then the
/// <see cref="ILogitsConstraint"/> mask. Works in float32 on a copy: the raw logits stay what logprobs are computed from.
/// </summary>
public sealed class LogitsProcessor(SamplingOptions options, ILogitsConstraint? constraint = null)
{
    readonly Dictionary<int, int> counts = [];
    readonly long[] biasIds = options.LogitBias?.Keys.Select(k => (long)k).ToArray() ?? [];
    readonly float[] biasValues = options.LogitBias?.Values.Select(v => (float)v).ToArray() ?? [];
    readonly bool penalised = options.FrequencyPenalty != 0 || options.PresencePenalty != 0;

    /// <summary>The logits to sample from: <paramref name="logits"/> itself when nothing applies, else a processed float32 copy.</summary>
    public Tensor Apply(Tensor logits)
    {
        if ((!penalised || counts.Count == 0) && biasIds.Length == 0 && constraint is null) return logits;
        var l = logits.to_type(ScalarType.Float32, copy: true);
        if (penalised && counts.Count > 0)
        {
            var ids = counts.Keys.Select(k => (long)k).ToArray();
            var penalty = counts.Values.Select(c => (float)-(options.FrequencyPenalty * c + options.PresencePenalty)).ToArray();
            l.index_add_(0, tensor(ids), tensor(penalty), 1);
        }
        if (biasIds.Length > 0) l.index_add_(0, tensor(biasIds), tensor(biasValues), 1);
        if (constraint is not null)
        {
            constraint.Mask(l);
            if (l.isneginf().all().item<bool>()) throw new InvalidOperationException("The output constraint allows no next token.");
        }
        return l;
    }

    /// <summary>Takes the sampled token: counted for the penalties (when it is generated text, not an end id) and passed to the constraint.</summary>
    public void Accept(int token, bool generated)
    {
        if (generated && penalised) counts[token] = counts.GetValueOrDefault(token) + 1;
        constraint?.Advance(token);
    }
}

/// <summary>One alternative token and its log-probability; <see cref="Bytes"/> are the UTF-8 bytes of its text.</summary>
public sealed record TopLogprob(int Token, string Text, byte[] Bytes, float Logprob);

/// <summary>A generated token's log-probability under the model (raw log-softmax) and the top alternatives at its position.</summary>
public sealed record TokenLogprob(int Token, string Text, byte[] Bytes, float Logprob, IReadOnlyList<TopLogprob> Top)
{
    /// <summary>
    /// From the raw logits [vocab] of the position: log-softmax before temperature, penalties, bias and masks (vLLM's
    /// default), in float32; the <paramref name="top"/> most likely tokens, best first.
    /// </summary>
    public static TokenLogprob Of(Tensor logits, int token, int top, ITextTokenizer tokenizer)
    {
        using var scope = NewDisposeScope();
        var logprobs = nn.functional.log_softmax(logits.to_type(ScalarType.Float32), 0);
        var alternatives = new List<TopLogprob>(top);
        if (top > 0)
        {
            var (values, indices) = logprobs.topk(top);
            var (v, i) = (values.data<float>().ToArray(), indices.data<long>().ToArray());
            for (int k = 0; k < top; k++) alternatives.Add(Describe((int)i[k], v[k], tokenizer));
        }
        var chosen = Describe(token, logprobs[token].item<float>(), tokenizer);
        return new TokenLogprob(token, chosen.Text, chosen.Bytes, chosen.Logprob, alternatives);
    }

    /// <summary>
    /// A token's own text (its decoded string; a piece of a multi-byte character decodes to U+FFFD) and bytes: exactly
    /// what the token writes (<see cref="TokenVocabulary"/>: a byte-level BPE piece of a character is its own bytes, not
    /// U+FFFD's), or the UTF-8 of the text for special tokens.
    /// </summary>
    static TopLogprob Describe(int token, float logprob, ITextTokenizer tokenizer)
    {
        var text = tokenizer.Decode([token], skipSpecialTokens: false);
        var exact = TokenVocabulary.For(tokenizer).Bytes;
        var bytes = token < exact.Length && exact[token] is { } own ? own : System.Text.Encoding.UTF8.GetBytes(text);
        return new TopLogprob(token, text, bytes, logprob);
    }
}
