using AdapterService.Core.Inference;

namespace AdapterService.Core.Tests.Inference;

/// <summary>The default admission policy, <see cref="ProjectShares"/>: one project's flood is refused while another's requests are admitted and start first.</summary>
public sealed partial class InferenceEngineTests
{
    /// <summary>Passes every decision to <see cref="ProjectShares"/> and notes whose requests start, in order.</summary>
    sealed class Recording(IAdmissionPolicy inner) : IAdmissionPolicy
    {
        public readonly List<string?> Started = [];
        public string? RefuseQueueing(AdmissionRequest request, int queued) => inner.RefuseQueueing(request, queued);
        public bool MayStart(AdmissionRequest request, AdmissionLoad load) => inner.MayStart(request, load);
        void IAdmissionPolicy.Started(AdmissionRequest request)
        {
            lock (Started) Started.Add(request.Project);
            inner.Started(request);
        }
        public void Ended(AdmissionRequest request) => inner.Ended(request);
        public IReadOnlyList<AdmissionRequest> Preempt(AdmissionRequest request, AdmissionLoad load, IReadOnlyList<RunningRequest> running) => inner.Preempt(request, load, running);
        public void Preempted(AdmissionRequest request) => inner.Preempted(request);
    }

    /// <summary>
    /// Two running rows and two waiting places, half of them per project: project a's first request holds the engine's
    /// thread, its second fills a's share and its third is refused as busy, naming the share, while b's is admitted; when
    /// the engine goes on, b's starts before a's second (a already runs its fair row); once all end, a is admitted again.
    /// </summary>
    [Fact]
    public async Task AFloodingProjectIsRefusedWhileAnotherIsAdmittedAndStartsFirst()
    {
        var options = new InferenceOptions { MaxBatch = 2, MaxQueued = 2, PrefixCacheBytes = 0, ProjectShare = 0.5 };
        var policy = new Recording(new ProjectShares(options));
        using var engine = new InferenceEngine(options, policy: policy);
        using var gate = new ManualResetEventSlim();
        var first = (await engine.StartAsync(Request(null, promptSeed: 1, maxTokens: 6) with { Project = "a", Constraint = () => new Counting(1, gate) }))
            .GetAsyncEnumerator();
        Assert.True(await first.MoveNextAsync());   // a's first runs; the engine's thread now waits at its next token

        var second = await engine.StartAsync(Request(null, promptSeed: 2, maxTokens: 3) with { Project = "a" });
        var busy = await Assert.ThrowsAsync<EngineBusyException>(() => engine.StartAsync(Request(null, promptSeed: 3, maxTokens: 3) with { Project = "a" }));
        Assert.Contains("its share of the server is 2", busy.Message);
        var other = await engine.StartAsync(Request(null, promptSeed: 4, maxTokens: 3) with { Project = "b" });
        gate.Set();

        while (await first.MoveNextAsync()) { }
        var texts = await Task.WhenAll(Task.Run(async () => string.Concat(await second.Select(c => c.Text).ToListAsync())),
            Task.Run(async () => string.Concat(await other.Select(c => c.Text).ToListAsync())));
        Assert.All(texts, t => Assert.NotEmpty(t));
        Assert.Equal(["a", "b", "a"], policy.Started);

        // Everything ended: a's share is free again.
        Assert.NotEmpty(await ChunksAsync(engine, Request(null, promptSeed: 5, maxTokens: 2) with { Project = "a" }));
        Assert.Equal(0, engine.Queued);
    }

    /// <summary>
    /// ProjectShares' preemption rule, asked directly: rows are taken from the newest requests of a project above its fair
    /// part (the batch of 4 ÷ 2 projects), never below it, and only for a project within its own; a request that would
    /// still not fit takes nothing; without <see cref="InferenceOptions.Preemption"/> nothing is taken.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void ProjectSharesPreemptsTheNewestAboveTheirFairPartOnly(bool preemption)
    {
        var options = new InferenceOptions { MaxBatch = 4, MaxQueued = 8, Preemption = preemption };
        IAdmissionPolicy shares = new ProjectShares(options);
        AdmissionRequest Of(string project, int choices) => new(project, RequestSource.Api, 8, 0, 8, choices);
        var (older, newer) = (Of("a", 2), Of("a", 2));
        foreach (var r in new[] { older, newer }) { Assert.Null(shares.RefuseQueueing(r, 0)); shares.Started(r); }
        var full = new AdmissionLoad(4, 4, 4, 0, 1);
        RunningRequest[] running = [new(older, 2), new(newer, 2)];
        var b = Of("b", 1);
        Assert.Null(shares.RefuseQueueing(b, 0));
        Assert.Equal(preemption ? new[] { newer } : [], shares.Preempt(b, full, running));
        Assert.Empty(shares.Preempt(Of("b", 3), full, running));            // b would be above its fair part of 2
        Assert.Empty(shares.Preempt(b, full, [new(older, 4)]));             // a would go below its fair part
        shares.Preempted(newer);
        Assert.Empty(shares.Preempt(newer, new AdmissionLoad(2, 3, 4, 1, 1), [new(older, 2), new(b, 1)]));   // b is within its part
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void WithFairRowsAProjectIsPreemptedDownToItsFairPartAtOnce(bool fairRows)
    {
        var options = new InferenceOptions { MaxBatch = 6, MaxQueued = 8, FairRows = fairRows };
        IAdmissionPolicy shares = new ProjectShares(options);
        AdmissionRequest Of(string project, int prompt) => new(project, RequestSource.Api, prompt, 0, 8, 1);   // told apart by their prompts
        var a = Enumerable.Range(0, 6).Select(i => Of("a", 8 + i)).ToList();
        foreach (var r in a) { Assert.Null(shares.RefuseQueueing(r, 0)); shares.Started(r); }
        var b = Of("b", 8);
        Assert.Null(shares.RefuseQueueing(b, 0));
        var taken = shares.Preempt(b, new AdmissionLoad(6, 6, 6, 0, 1), [.. a.Select(r => new RunningRequest(r, 1))]);
        // b needs one row; a's fair part is 6 rows ÷ 2 projects = 3: with fair rows a gives back its 3 newest, else only 1.
        Assert.Equal(fairRows ? [a[5], a[4], a[3]] : [a[5]], taken.ToList());
    }
}
