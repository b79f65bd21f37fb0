using AdapterService.Core.Inference;
using AdapterService.Core.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Inference;

public sealed class SamplingTests
{
    public SamplingTests() => TorchRuntime.EnsureReady();

    static List<int> Draw(Tensor logits, SamplingOptions options, Generator? generator, int count) =>
        Enumerable.Range(0, count).Select(_ => Sampler.Next(logits, options, generator)).ToList();

    [Fact]
    public void TemperatureZeroIsArgmax()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(71);
        for (int i = 0; i < 20; i++)
        {
            var logits = randn([264], generator: g);
            Assert.Equal(logits.argmax().item<long>(), Sampler.Next(logits, new SamplingOptions(1, Temperature: 0), null));
        }
    }

    /// <summary>
    /// A logprob's bytes are what its token writes: a text whose characters byte-level BPE splits into pieces is its
    /// tokens' bytes put together (a piece alone decodes to U+FFFD, whose own UTF-8 would be wrong).
    /// </summary>
    [Fact]
    public void LogprobBytesAreTheTokensOwnBytes()
    {
        using var scope = NewDisposeScope();
        var tokenizer = JsonConstraintTests.Tokenizer("qwen3");
        const string text = "𝔘𝔫𝔦 쀍 鼷 …";
        var ids = tokenizer.Encode(text, addSpecialTokens: false);
        var logits = zeros(tokenizer.VocabularySize);
        var described = ids.Select(id => TokenLogprob.Of(logits, id, 0, tokenizer)).ToList();
        Assert.Contains(described, d => d.Text.Contains('\uFFFD'));   // some token is a piece of a character
        Assert.Equal(System.Text.Encoding.UTF8.GetBytes(text), described.SelectMany(d => d.Bytes).ToArray());
    }

    [Fact]
    public void TinyTopPAlwaysSamplesTheTopToken()
    {
        using var scope = NewDisposeScope();
        var logits = tensor(new float[] { 0.5f, 1.0f, 0.9f, 0.2f, 0.95f });   // nearly flat: top token has p ≈ 0.24
        using var g = new Generator(72);
        Assert.All(Draw(logits, new SamplingOptions(1, Temperature: 1, TopP: 1e-6), g, 200), t => Assert.Equal(1, t));
    }

    [Fact]
    public void TopPKeepsTheSmallestSetOfTopTokensReachingP()
    {
        using var scope = NewDisposeScope();
        var logits = tensor(new[] { 0.1f, 0.4f, 0.2f, 0.3f }).log();   // sorted: 1 (0.4), 3 (0.3), 2 (0.2), 0 (0.1)
        using var g = new Generator(73);

        var drawn = Draw(logits, new SamplingOptions(1, TopP: 0.6), g, 400);   // 0.4 < 0.6 <= 0.4 + 0.3
        Assert.Equal([1, 3], drawn.Distinct().Order());
        Assert.InRange(drawn.Count(t => t == 1) / 400.0, 0.47, 0.67);          // renormalised: 0.4 / 0.7 ≈ 0.57

        Assert.Equal([0, 1, 2, 3], Draw(logits, new SamplingOptions(1), g, 400).Distinct().Order());
    }

    [Fact]
    public void ASeededGeneratorReproducesSamples()
    {
        using var scope = NewDisposeScope();
        var logits = zeros(264);   // uniform
        var options = new SamplingOptions(1, Temperature: 0.7, TopP: 0.95);
        List<int> Run(ulong seed) { using var g = new Generator(seed); return Draw(logits, options, g, 50); }

        Assert.Equal(Run(74), Run(74));
        Assert.NotEqual(Run(74), Run(75));
    }

    /// <summary>The logits step against the formula in float64: logit − frequency·count − presence·[count &gt; 0] + bias; the raw logits untouched.</summary>
    [Fact]
    public void TheLogitsStepAppliesPenaltiesThenBias()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(76);
        var logits = randn([40], generator: g);
        var raw = logits.data<float>().Select(v => (double)v).ToArray();
        var bias = new Dictionary<int, double> { [3] = 5, [7] = -100, [9] = 0.25 };
        var step = new LogitsProcessor(new SamplingOptions(8, FrequencyPenalty: 0.6, PresencePenalty: -1.2, LogitBias: bias));
        int[] generated = [3, 5, 3, 11, 3];
        foreach (var t in generated) step.Accept(t, generated: true);
        step.Accept(39, generated: false);   // an end id is not generated text
        var got = step.Apply(logits).data<float>().ToArray();
        for (int t = 0; t < 40; t++)
        {
            int count = generated.Count(x => x == t);
            double expected = raw[t] - 0.6 * count - (count > 0 ? -1.2 : 0) + bias.GetValueOrDefault(t);
            Assert.Equal(expected, got[t], 1e-5);
        }
        Assert.Equal(raw.Select(v => (float)v), logits.data<float>().ToArray());
        Assert.Same(logits, new LogitsProcessor(new SamplingOptions(8)).Apply(logits));   // nothing to do: no copy
    }

    [Fact]
    public void AConstraintThatAllowsNothingFailsTheSequence()
    {
        using var scope = NewDisposeScope();
        var step = new LogitsProcessor(new SamplingOptions(8), new Nothing());
        Assert.Throws<InvalidOperationException>(() => step.Apply(zeros(10)));
    }

    sealed class Nothing : ILogitsConstraint
    {
        public void Mask(Tensor logits) => logits.fill_(double.NegativeInfinity);
        public void Advance(int token) { }
    }
}
