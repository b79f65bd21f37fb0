using System.Diagnostics;
using AdapterService.Core.Inference;

namespace AdapterService.Benchmarks;

/// <summary>
/// Fairness between projects (issue #22), through the engine: project A keeps 4× the engine's batch of streams in
/// flight (each of its clients sends its next request as soon as one ends, and retries a refusal after 10 ms) while
/// project B sends a burst of 8 requests; B's latency under that flood is compared with B alone, round-robin, once with
/// the engine's default admission policy (<see cref="ProjectShares"/>) and once without shares (ProjectShare 1).
/// </summary>
sealed class ProjectFairness(bool quick)
{
    const int PromptLength = 32, NewTokens = 32, BStreams = 8;

    static IReadOnlyList<(string Name, InferenceOptions Options)> Policies =>
    [
        ($"ProjectShares (the default, share {new InferenceOptions().ProjectShare})", new InferenceOptions { PrefixCacheBytes = 0 }),
        ("no shares (ProjectShare 1: first come, first served)", new InferenceOptions { PrefixCacheBytes = 0, ProjectShare = 1 }),
    ];

    public async Task RunAsync(Action<string> line)
    {
        var root = Directory.CreateTempSubdirectory("bench-fairness-");
        try
        {
            var folder = Measure.SaveRandomBase(root, Measure.Config(quick));
            int rounds = quick ? 2 : 3, flood = 4 * new InferenceOptions().MaxBatch;
            var engines = Policies.Select(p => new InferenceEngine(p.Options)).ToList();
            try
            {
                foreach (var engine in engines) await BurstAsync(engine, folder, 0);   // warm-up
                var alone = engines.Select(_ => new List<Burst>()).ToList();
                var flooded = engines.Select(_ => new List<Burst>()).ToList();
                for (int round = 0; round < rounds; round++)
                    for (int e = 0; e < engines.Count; e++)
                    {
                        alone[e].Add(await BurstAsync(engines[e], folder, 0));
                        flooded[e].Add(await BurstAsync(engines[e], folder, flood));
                    }

                line($"## 14. Fairness between projects: A floods the engine with {flood} streams (4× MaxBatch {new InferenceOptions().MaxBatch}) while B sends {BStreams}");
                line($"{PromptLength}-token prompts, {NewTokens} new tokens, greedy, base model of benchmark 1 (fp32). Each round runs B alone, then B under A's flood, " +
                     $"for each policy in turn; {rounds} rounds; cells are medians over the rounds (lowest–highest); ratios are taken within a round.");
                line("");
                line("| policy | B alone: first token p95 | request p95 | B under A's flood: first token p95 | request p95 | request p95 ÷ alone | A's refusals (429) | A's tokens/s |");
                line("|---|---|---|---|---|---|---|---|");
                for (int e = 0; e < engines.Count; e++)
                {
                    string Ms(List<Burst> runs, Func<Burst, double> f) => new Spread(runs.Select(f).ToList()).Format("F0") + " ms";
                    var ratio = new Spread(Enumerable.Range(0, rounds).Select(i => flooded[e][i].RequestP95 / alone[e][i].RequestP95).ToList());
                    line($"| {Policies[e].Name} | {Ms(alone[e], r => r.FirstTokenP95 * 1e3)} | {Ms(alone[e], r => r.RequestP95 * 1e3)} | " +
                         $"{Ms(flooded[e], r => r.FirstTokenP95 * 1e3)} | {Ms(flooded[e], r => r.RequestP95 * 1e3)} | **{ratio.Format()}** | " +
                         $"{new Spread(flooded[e].Select(r => (double)r.Refused).ToList()).Format("F0")} | {new Spread(flooded[e].Select(r => r.FloodTokensPerSecond).ToList()).Format("F0")} |");
                }
                line("");
                line("Target: with the default policy, B's request p95 under A's flood within 2× of B alone.");
            }
            finally
            {
                foreach (var engine in engines) engine.Dispose();
            }
        }
        finally
        {
            root.Delete(recursive: true);
        }
    }

    record Burst(double FirstTokenP95, double RequestP95, int Refused, double FloodTokensPerSecond);

    /// <summary>B's burst, alone (<paramref name="flood"/> 0) or while A keeps <paramref name="flood"/> streams going.</summary>
    static async Task<Burst> BurstAsync(InferenceEngine engine, string folder, int flood)
    {
        using var stop = new CancellationTokenSource();
        int refused = 0, running = 0;
        long floodTokens = 0;
        var clients = Enumerable.Range(0, flood).Select(async s =>
        {
            while (!stop.IsCancellationRequested)
                try
                {
                    bool first = true;
                    await foreach (var chunk in engine.Generate(Request(folder, "a", s), stop.Token))
                    {
                        if (first) { Interlocked.Increment(ref running); first = false; }
                        Interlocked.Increment(ref floodTokens);
                    }
                }
                catch (EngineBusyException) { Interlocked.Increment(ref refused); await Task.Delay(10); }
                catch (OperationCanceledException) { }
        }).ToList();
        // B starts once A's rows fill the batch (every running place taken, the rest of A's clients waiting).
        var fill = Stopwatch.StartNew();
        while (flood > 0 && Volatile.Read(ref running) < new InferenceOptions().MaxBatch && fill.Elapsed < TimeSpan.FromMinutes(2)) await Task.Delay(5);
        long tokensBefore = Interlocked.Read(ref floodTokens);
        var clock = Stopwatch.StartNew();
        var b = await Task.WhenAll(Enumerable.Range(0, BStreams).Select(async s =>
        {
            var started = clock.Elapsed.TotalSeconds;
            double? firstToken = null;
            await foreach (var chunk in engine.Generate(Request(folder, "b", s)))
                firstToken ??= clock.Elapsed.TotalSeconds - started;
            return (First: firstToken ?? double.NaN, Total: clock.Elapsed.TotalSeconds - started);
        }));
        double seconds = clock.Elapsed.TotalSeconds;
        double floodRate = (Interlocked.Read(ref floodTokens) - tokensBefore) / seconds;
        stop.Cancel();
        await Task.WhenAll(clients);
        return new Burst(Measure.Percentile([.. b.Select(x => x.First)], 0.95), Measure.Percentile([.. b.Select(x => x.Total)], 0.95), refused, floodRate);
    }

    static GenerationRequest Request(string folder, string project, int stream) =>
        new("fairness", folder, null, null, Enumerable.Range(0, PromptLength).Select(i => 'a' + (i * 7 + stream) % 26).ToList(),
            new SamplingOptions(NewTokens, 0), Project: project);
}
