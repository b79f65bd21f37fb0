using AdapterService.Core.Inference;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Inference;

/// <summary>Chunked prefill: prompts split over engine steps, positions after what their slot holds, Lily's router sums carried.</summary>
public sealed partial class InferenceEngineTests
{
    /// <summary>A request with a prompt of <paramref name="length"/> random tokens.</summary>
    GenerationRequest LongRequest(int? adapter, int length, int seed, int maxTokens = 8)
    {
        var prompt = Ids(1, length, seed).data<long>().Select(i => (int)i).ToList();
        return Request(adapter, seed, maxTokens) with { Prompt = prompt };
    }

    /// <summary>
    /// Prompts of 5 to 47 tokens split into chunks of 2 to 8 tokens (the step budget less the running rows), several at
    /// once in two prefill slots, with LoRA, two Lily adapters (router sums carried across chunks), MixLoRA and none, one
    /// of them with n = 2: each is what the uncached model says and what the unchunked scheduler gives.
    /// </summary>
    [Fact]
    public async Task ChunkedPrefillGivesWhatTheUnchunkedSchedulerAndTheUncachedModelGive()
    {
        int?[] adapters = [0, 5, 8, 7, null, 5];
        int[] lengths = [5, 13, 21, 30, 47, 40];
        var requests = lengths.Select((length, i) => LongRequest(adapters[i], length, seed: 40 + i)).ToList();
        requests[1] = requests[1] with { Options = requests[1].Options with { N = 2 } };
        using var chunked = new InferenceEngine(new InferenceOptions { MaxBatch = 4, PrefillSlots = 2, StepTokens = 8 });
        using var whole = new InferenceEngine(new InferenceOptions { MaxBatch = 4, ChunkedPrefill = false });
        var together = await Task.WhenAll(requests.Select(r => ChunksAsync(chunked, r)));
        Assert.True(chunked.PrefillForwards > requests.Sum(r => r.Prompt.Count) / 8, $"{chunked.PrefillForwards} prefill forwards: prompts were split");
        for (int i = 0; i < requests.Count; i++)
        {
            int n = requests[i].Options.N;
            var expected = Text(Reference(requests[i]));
            Assert.Equal(Enumerable.Repeat(expected, n), ChoiceTexts(together[i], n));
            Assert.Equal(ChoiceTexts(await ChunksAsync(whole, requests[i]), n), ChoiceTexts(together[i], n));
        }
    }

    /// <summary>
    /// A running stream keeps producing tokens while a long prompt is prefilled, counted on the engine's thread (each
    /// request's constraint sees its sampling steps): the stream holds the engine after its second token until the long
    /// prompt is queued; chunked, the 60-token prompt takes 9 steps of at most 7 tokens and the stream samples a token in
    /// each; unchunked, the prompt is prefilled whole before the stream's next token.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task ARunningStreamKeepsDecodingWhileALongPromptIsPrefilled(bool chunked)
    {
        using var engine = new InferenceEngine(new InferenceOptions { MaxBatch = 4, PrefillSlots = 1, StepTokens = 8, ChunkedPrefill = chunked });
        using var queued = new ManualResetEventSlim();
        var stream = new Counting(waitAt: 1, queued);
        var running = (await engine.StartAsync(Request(0, promptSeed: 2, maxTokens: 40) with { Constraint = () => stream })).GetAsyncEnumerator();
        Assert.True(await running.MoveNextAsync());   // its first token: it runs
        int streamed = running.Current.Text.Length;
        int? atFirstToken = null;
        var prompt = LongRequest(null, 60, seed: 9, maxTokens: 1) with { Constraint = () => new Counting(0, null, () => atFirstToken ??= stream.Steps) };
        long forwards = engine.PrefillForwards;
        var prefilled = await engine.StartAsync(prompt);
        queued.Set();
        await foreach (var _ in prefilled) { }
        while (await running.MoveNextAsync()) streamed += running.Current.Text.Length;
        Assert.Equal(40, streamed);
        int during = atFirstToken!.Value - 2;   // the stream's tokens after the two it had when the prompt came
        if (chunked)
        {
            Assert.True(engine.PrefillForwards - forwards >= 9, $"{engine.PrefillForwards - forwards} prefill forwards for 60 tokens");
            Assert.True(during >= 8, $"the running stream sampled {during} tokens while the prompt was prefilled");
        }
        else Assert.InRange(during, 0, 1);
    }

    /// <summary>
    /// Allows only digits (so a stream never ends early) and counts the tokens sampled; with a gate, holds the engine's
    /// thread at sampling step <c>waitAt</c> until the gate opens; runs <c>onMask</c> at each sampling.
    /// </summary>
    sealed class Counting(int waitAt, ManualResetEventSlim? gate, Action? onMask = null) : ILogitsConstraint
    {
        public int Steps;

        public void Mask(Tensor logits)
        {
            if (Steps == waitAt) gate?.Wait();
            onMask?.Invoke();
            var allowed = zeros(logits.shape[0], ScalarType.Bool);
            allowed.narrow(0, '0', 10).fill_(true);
            logits.masked_fill_(allowed.logical_not(), double.NegativeInfinity);
        }

        public void Advance(int token) => Steps++;
    }
}
