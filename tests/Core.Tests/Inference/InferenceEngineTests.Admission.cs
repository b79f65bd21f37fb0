using AdapterService.Core.Inference;

namespace AdapterService.Core.Tests.Inference;

/// <summary>Admission's hook: a small per-project policy decides who queues and who starts, and sees each request's project, source and tokens.</summary>
public sealed partial class InferenceEngineTests
{
    /// <summary>Notes what starts; with shares, one running request per project (a crude share) and project "blocked" refused.</summary>
    sealed class OnePerProject(bool shares) : IAdmissionPolicy
    {
        readonly HashSet<string?> running = [];
        public readonly List<AdmissionRequest> Started = [];

        public string? RefuseQueueing(AdmissionRequest request, int queued) => shares && request.Project == "blocked" ? "project blocked is over its share" : null;

        public bool MayStart(AdmissionRequest request, AdmissionLoad load) => !shares || !running.Contains(request.Project);

        void IAdmissionPolicy.Started(AdmissionRequest request)
        {
            Started.Add(request);
            running.Add(request.Project);
        }

        public void Ended(AdmissionRequest request) => running.Remove(request.Project);
    }

    /// <summary>
    /// A request of project a runs (holding the engine until two more are queued: a's second, a rollout, then b's, an eval
    /// run). With shares, a's second waits and b's starts first; without, arrival order. The policy's refusal is the
    /// caller's busy error; the hook sees each request's project, source, prompt and cached tokens.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task TheAdmissionPolicyDecidesWhoStarts(bool shares)
    {
        var policy = new OnePerProject(shares);
        using var engine = new InferenceEngine(new InferenceOptions { MaxBatch = 8, PrefixBlockTokens = 8 }, policy: policy);
        await ChunksAsync(engine, Shared(null, 75, project: "a"));   // a's prefix cached
        using var queued = new ManualResetEventSlim();
        var first = Request(null, promptSeed: 2, maxTokens: 6) with { Project = "a", Constraint = () => new Counting(1, queued) };
        var running = (await engine.StartAsync(first)).GetAsyncEnumerator();
        Assert.True(await running.MoveNextAsync());
        var second = await engine.StartAsync(Shared(null, 71, project: "a") with { Source = RequestSource.Rollout });
        var other = await engine.StartAsync(Request(null, promptSeed: 4, maxTokens: 3) with { Project = "b", Source = RequestSource.Eval });
        queued.Set();
        while (await running.MoveNextAsync()) { }
        await Task.WhenAll(Task.Run(async () => { await foreach (var _ in second) { } }), Task.Run(async () => { await foreach (var _ in other) { } }));

        var started = policy.Started.Skip(2).ToList();   // after the warm-up and the first
        Assert.Equal(shares ? ["b", "a"] : ["a", "b"], started.Select(r => r.Project));
        var rollout = started.Single(r => r.Source == RequestSource.Rollout);
        Assert.Equal((47, 40, 8, 1), (rollout.PromptTokens, rollout.CachedTokens, rollout.MaxTokens, rollout.Choices));
        Assert.Equal(RequestSource.Eval, started.Single(r => r.Project == "b").Source);
        if (shares)
        {
            var busy = await Assert.ThrowsAsync<EngineBusyException>(() => engine.StartAsync(first with { Project = "blocked", Constraint = null }));
            Assert.Contains("over its share", busy.Message);
        }
        Assert.Equal(0, engine.Queued);
    }
}
