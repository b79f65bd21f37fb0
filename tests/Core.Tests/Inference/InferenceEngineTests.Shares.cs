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
}
