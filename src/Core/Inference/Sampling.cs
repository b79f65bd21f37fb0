using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// Per-request sampling settings, in OpenAI's meaning: temperature 0 is greedy; <paramref name="N"/> choices sampled
/// independently from one prefilled prompt; penalties and bias as <see cref="LogitsProcessor"/> applies them;
/// <paramref name="Logprobs"/>: when set, each generated token's log-probability and that many top alternatives.
/// </summary>
public sealed record SamplingOptions(int MaxTokens, double Temperature = 1.0, double TopP = 1.0, IReadOnlyList<string>? Stop = null, long? Seed = null,
    int N = 1, double PresencePenalty = 0, double FrequencyPenalty = 0, IReadOnlyDictionary<int, double>? LogitBias = null, int? Logprobs = null);

public static class Sampler
{
    /// <summary>Picks the next token from logits [vocab]: argmax at temperature 0, else softmax(logits / T) cut to the top-p nucleus.</summary>
    public static int Next(Tensor logits, SamplingOptions options, Generator? generator)
    {
        if (options.Temperature <= 0) return (int)logits.argmax().item<long>();
        // In float64 with the maximum subtracted, so even a tiny temperature stays finite (the top token gets all the mass).
        var l = logits.to_type(ScalarType.Float64);
        var probs = nn.functional.softmax((l - l.max()) / options.Temperature, 0);
        if (options.TopP < 1)
        {
            var (sorted, indices) = probs.sort(descending: true);
            var before = sorted.cumsum(0) - sorted;             // probability mass of the tokens ranked above each one
            sorted = sorted.masked_fill((before >= options.TopP).logical_and(before > 0), 0);   // the top token always stays
            probs = zeros_like(probs).scatter(0, indices, sorted);
        }
        return (int)probs.multinomial(1, generator: generator).item<long>();
    }
}
