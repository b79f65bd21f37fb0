using AdapterService.Core.Inference;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Inference;

/// <summary>
/// Preemption: the policy names running requests to give their rows to a waiting one; the engine frees their rows, and
/// each goes on later exactly where it was (prompt and generated tokens prefilled again, nothing streamed twice).
/// </summary>
public sealed partial class InferenceEngineTests
{
    /// <summary>For requests of <paramref name="project"/>, preempts every running request of the other projects; never for the others.</summary>
    sealed class PreemptOthersFor(string project) : IAdmissionPolicy
    {
        public IReadOnlyList<AdmissionRequest> Preempt(AdmissionRequest request, AdmissionLoad load, IReadOnlyList<RunningRequest> running) =>
            request.Project == project ? running.Where(r => r.Request.Project != project).Select(r => r.Request).ToList() : [];
    }

    /// <summary>
    /// Counts a sequence's sampling steps on the engine's thread; at step <c>waitAt</c> signals <c>reached</c> and holds
    /// the thread until <c>gate</c> opens; runs <c>onStep</c> at each. Changes no logit, unless <c>digits</c> (then only
    /// digits may come, so the sequence runs to its max_tokens).
    /// </summary>
    sealed class Probe(int waitAt = -1, ManualResetEventSlim? reached = null, ManualResetEventSlim? gate = null, Action<int>? onStep = null, bool digits = false)
        : ILogitsConstraint
    {
        public int Steps;

        public void Mask(Tensor logits)
        {
            if (Steps == waitAt)
            {
                reached?.Set();
                Assert.True(gate?.Wait(TimeSpan.FromMinutes(1)) ?? true, "the test never opened the gate");
            }
            onStep?.Invoke(Steps);
            if (!digits) return;
            var allowed = zeros(logits.shape[0], ScalarType.Bool);
            allowed.narrow(0, '0', 10).fill_(true);
            logits.masked_fill_(allowed.logical_not(), double.NegativeInfinity);
        }

        public void Advance(int token) => Steps++;
    }

    static Task<List<GenerationChunk>> CollectAsync(IAsyncEnumerable<GenerationChunk> chunks) => Task.Run(async () => await chunks.ToListAsync());

    /// <summary>What a client sees of each choice: its chunks' text, counts and finish reasons, and each token's logprob and top alternatives.</summary>
    static void AssertSameStreams(List<GenerationChunk> expected, List<GenerationChunk> actual, int n)
    {
        for (int i = 0; i < n; i++)
        {
            var (want, got) = (expected.Where(c => c.Index == i).ToList(), actual.Where(c => c.Index == i).ToList());
            Assert.Equal(want.Select(c => (c.Text, c.PromptTokens, c.CompletionTokens, c.FinishReason, c.CachedTokens)),
                got.Select(c => (c.Text, c.PromptTokens, c.CompletionTokens, c.FinishReason, c.CachedTokens)));
            var (wantLogprobs, gotLogprobs) = (want.SelectMany(c => c.Logprobs ?? []).ToList(), got.SelectMany(c => c.Logprobs ?? []).ToList());
            Assert.Equal(wantLogprobs.Select(t => (t.Token, string.Join(",", t.Top.Select(a => a.Token)))), gotLogprobs.Select(t => (t.Token, string.Join(",", t.Top.Select(a => a.Token)))));
            for (int t = 0; t < wantLogprobs.Count; t++)
            {
                Assert.Equal(wantLogprobs[t].Logprob, gotLogprobs[t].Logprob, 1e-4);   // keys and values computed again: float rounding only
                for (int k = 0; k < wantLogprobs[t].Top.Count; k++) Assert.Equal(wantLogprobs[t].Top[k].Logprob, gotLogprobs[t].Top[k].Logprob, 1e-4);
            }
        }
    }

    /// <summary>
    /// Project a runs a greedy LoRA request and a seeded Lily request of n = 2 (router sums per sequence), both with
    /// logprobs; after a few tokens project b's request of n = 2 arrives and the policy preempts both of a's. b runs, a's
    /// LoRA request resumes beside it, the Lily one (its choices prefilled again one after the other) once b ends. Each
    /// of a's streams is exactly the stream of the same request never preempted (text chunk by chunk, usage, finish,
    /// logprobs), under chunked prefill and the whole-prompt scheduler, with prefix-cache blocks of 4 tokens.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task APreemptedRequestGoesOnExactlyWhereItWas(bool chunked)
    {
        var options = new InferenceOptions { MaxBatch = 4, PrefixBlockTokens = 4, ChunkedPrefill = chunked, StepTokens = 12 };
        var greedy = Request(0, promptSeed: 6, maxTokens: 14) with { Project = "a" };
        greedy = greedy with { Options = greedy.Options with { Logprobs = 2 } };
        var seeded = Request(5, promptSeed: 8, maxTokens: 14, temperature: 1.0, seed: 21) with { Project = "a" };
        seeded = seeded with { Options = seeded.Options with { Logprobs = 2, N = 2 } };
        List<GenerationChunk> greedyAlone, seededAlone;
        using (var alone = new InferenceEngine(options))
        {
            greedyAlone = await ChunksAsync(alone, greedy with { Constraint = () => new Probe() });
            seededAlone = await ChunksAsync(alone, seeded with { Constraint = () => new Probe() });
        }
        Assert.Equal(14, greedyAlone.Last().CompletionTokens);   // neither ends before b comes

        using var engine = new InferenceEngine(options, policy: new PreemptOthersFor("b"));
        using ManualResetEventSlim firstHeld = new(), firstGate = new(), secondHeld = new(), secondGate = new();
        var greedyRun = CollectAsync(await engine.StartAsync(greedy with { Constraint = () => new Probe(0, firstHeld, firstGate) }));
        Assert.True(firstHeld.Wait(TimeSpan.FromMinutes(1)));   // the greedy request samples its first token; the Lily one queues behind it
        int made = 0;
        var seededRun = CollectAsync(await engine.StartAsync(seeded with { Constraint = () => made++ == 0 ? new Probe(3, secondHeld, secondGate) : new Probe() }));
        firstGate.Set();
        Assert.True(secondHeld.Wait(TimeSpan.FromMinutes(1)));   // three rows running, each a few tokens in
        var other = Request(1, promptSeed: 3, maxTokens: 5) with { Project = "b" };
        var otherRun = CollectAsync(await engine.StartAsync(other with { Options = other.Options with { N = 2 } }));
        secondGate.Set();

        var results = await Task.WhenAll(greedyRun, seededRun, otherRun);
        Assert.Equal(2, engine.Preemptions);
        AssertSameStreams(greedyAlone, results[0], 1);
        AssertSameStreams(seededAlone, results[1], 2);
        Assert.Equal(2, results[2].Count(c => c.FinishReason is not null));
        for (int wait = 0; engine.Running > 0 && wait < 100; wait++) await Task.Delay(50);   // a stream ends just before its row leaves
        Assert.Equal((0, 0), (engine.Queued, engine.Running));
    }

    /// <summary>
    /// With <see cref="ProjectShares"/>, project a runs four long requests in a batch of four and has two more waiting;
    /// b's request arrives and starts within two engine steps (a's oldest request counts them), not when one of a's rows
    /// ends: a's newest gives its row back and later finishes whole. Once b is done, a has the whole batch again.
    /// </summary>
    [Fact]
    public async Task AnotherProjectsRequestStartsWithinAStepWhileOneProjectFloods()
    {
        var options = new InferenceOptions { MaxBatch = 4, MaxQueued = 8, PrefixCacheBytes = 0 };
        using var engine = new InferenceEngine(options, policy: new ProjectShares(options));
        using ManualResetEventSlim firstHeld = new(), firstGate = new(), fullHeld = new(), fullGate = new();
        int startedAt = -1, fullAfter = 0;
        bool otherDone = false;
        var oldest = new Probe(0, firstHeld, firstGate, digits: true, onStep: _ => { if (otherDone) fullAfter = Math.Max(fullAfter, engine.Running); });
        var flood = new List<Task<List<GenerationChunk>>>
        {
            CollectAsync(await engine.StartAsync(Request(null, promptSeed: 1, maxTokens: 30) with { Project = "a", Constraint = () => oldest })),
        };
        Assert.True(firstHeld.Wait(TimeSpan.FromMinutes(1)));
        for (int i = 2; i <= 6; i++)
        {
            var probe = i == 4 ? new Probe(1, fullHeld, fullGate, digits: true) : new Probe(digits: true);   // a's fourth: the batch is full at its second token
            flood.Add(CollectAsync(await engine.StartAsync(Request(null, promptSeed: i, maxTokens: 30) with { Project = "a", Constraint = () => probe })));
        }
        firstGate.Set();
        Assert.True(fullHeld.Wait(TimeSpan.FromMinutes(1)));
        Assert.Equal(4, engine.Running);
        int arrived = oldest.Steps;
        var other = Request(null, promptSeed: 9, maxTokens: 3) with { Project = "b" };
        var otherRun = CollectAsync(await engine.StartAsync(other with { Constraint = () => new Probe(digits: true, onStep: s =>
        {
            if (s == 0) startedAt = oldest.Steps;
            if (s == 2) otherDone = true;
        }) }));
        fullGate.Set();
        await otherRun;
        var all = await Task.WhenAll(flood);

        Assert.InRange(startedAt - arrived, 0, 2);
        Assert.True(startedAt < 29, "b started before any of a's rows ended");
        Assert.True(engine.Preemptions >= 1);
        Assert.All(all, chunks => Assert.Equal(30, chunks.Last().CompletionTokens));
        Assert.Equal(4, fullAfter);   // b's row went back to a
    }

    /// <summary>A project alone runs as many rows as the batch has (no rows kept back for others), and nothing is preempted.</summary>
    [Fact]
    public async Task ALoneProjectGetsTheWholeBatch()
    {
        var options = new InferenceOptions { MaxBatch = 4, MaxQueued = 8, PrefixCacheBytes = 0 };
        using var engine = new InferenceEngine(options, policy: new ProjectShares(options));
        using ManualResetEventSlim held = new(), gate = new();
        int most = 0;
        var runs = new List<Task<List<GenerationChunk>>>();
        for (int i = 0; i < 6; i++)
        {
            var probe = new Probe(i == 0 ? 0 : -1, held, gate, onStep: _ => most = Math.Max(most, engine.Running), digits: true);
            runs.Add(CollectAsync(await engine.StartAsync(Request(null, promptSeed: i, maxTokens: 8) with { Project = "a", Constraint = () => probe })));
            if (i == 0) Assert.True(held.Wait(TimeSpan.FromMinutes(1)));
        }
        gate.Set();
        await Task.WhenAll(runs);
        Assert.Equal((4, 0L), (most, engine.Preemptions));
    }

    /// <summary>
    /// Fair rows: while b's long request runs, a's four short ones run at most a's fair part of the batch of four (two)
    /// at a time, though a third row is idle (so b's steps stay as short as they can); without, a fills the batch.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task WhileAnotherProjectRunsAProjectKeepsToItsFairRows(bool fairRows)
    {
        var options = new InferenceOptions { MaxBatch = 4, MaxQueued = 8, PrefixCacheBytes = 0, FairRows = fairRows };
        using var engine = new InferenceEngine(options, policy: new ProjectShares(options));
        using ManualResetEventSlim held = new(), gate = new();
        int most = 0;
        var other = Request(null, promptSeed: 9, maxTokens: 24) with { Project = "b" };
        var otherRun = CollectAsync(await engine.StartAsync(other with { Constraint = () => new Probe(0, held, gate, s => most = Math.Max(most, engine.Running), digits: true) }));
        Assert.True(held.Wait(TimeSpan.FromMinutes(1)));
        var flood = new List<Task<List<GenerationChunk>>>();
        for (int i = 0; i < 4; i++)
            flood.Add(CollectAsync(await engine.StartAsync(Request(null, promptSeed: i, maxTokens: 4) with { Project = "a", Constraint = () => new Probe(digits: true) })));
        gate.Set();
        await Task.WhenAll(flood);
        await otherRun;
        Assert.Equal(fairRows ? 3 : 4, most);   // b's row and a's two, or the whole batch
        Assert.Equal(0, engine.Preemptions);
    }

    /// <summary>
    /// Preemption amid everything else: a sends eight requests (LoRA, Lily, MixLoRA, DoRA and none; some of n = 2,
    /// some seeded) into a batch of four, b sends four once a runs, under ProjectShares; chunked with prompts split over
    /// steps, and whole-prompt. a's rows are preempted for b's, resume beside fresh prompts and each other, and every
    /// choice of every request is what it gives never preempted (the same requests on an engine without a policy).
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task PreemptionAmidPromptsAndChoicesChangesNoStream(bool chunked)
    {
        var options = new InferenceOptions { MaxBatch = 4, MaxQueued = 24, PrefixBlockTokens = 4, ChunkedPrefill = chunked, StepTokens = 8, PrefillSlots = 2 };
        int?[] adapters = [0, 5, 7, 4, null, 8, 1, 5];
        var flood = adapters.Select((adapter, i) =>
        {
            var r = LongRequest(adapter, 5 + 3 * i, seed: 60 + i, maxTokens: 12) with { Project = "a" };
            return r with { Options = r.Options with { N = i % 3 == 1 ? 2 : 1, Temperature = i % 2, Seed = 5 + i } };
        }).ToList();
        var others = Enumerable.Range(0, 4).Select(i => LongRequest(i % 2 == 0 ? 2 : null, 9 + i, seed: 80 + i, maxTokens: 5) with { Project = "b" }).ToList();
        List<List<string>> expected;
        using (var never = new InferenceEngine(options))   // no policy: nothing preempted (a row's output does not depend on its batchmates)
            expected = (await Task.WhenAll(flood.Concat(others).Select(r => ChunksAsync(never, r)))).Select((c, i) => ChoiceTexts(c, flood.Concat(others).ElementAt(i).Options.N)).ToList();

        using var engine = new InferenceEngine(options, policy: new ProjectShares(options));
        var floodRuns = new List<Task<List<GenerationChunk>>>();
        foreach (var r in flood) floodRuns.Add(CollectAsync(await engine.StartAsync(r)));
        for (var clock = System.Diagnostics.Stopwatch.StartNew(); engine.Running < 4 && clock.Elapsed < TimeSpan.FromMinutes(1);) await Task.Delay(1);
        var otherRuns = new List<Task<List<GenerationChunk>>>();   // b comes while a fills the batch, most of a's requests still waiting
        foreach (var r in others) otherRuns.Add(CollectAsync(await engine.StartAsync(r)));
        var got = await Task.WhenAll(floodRuns.Concat(otherRuns));

        var requests = flood.Concat(others).ToList();
        for (int i = 0; i < requests.Count; i++)
            Assert.Equal(expected[i], ChoiceTexts(got[i], requests[i].Options.N));
        Assert.True(engine.Preemptions >= 1, "nothing was preempted");
    }
}
