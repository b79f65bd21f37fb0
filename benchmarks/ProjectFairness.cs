using System.Diagnostics;
using AdapterService.Core.Inference;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Fairness between projects (issue #22), through the engine: project A keeps 4× the engine's batch of streams in
/// flight (each of its clients sends its next request as soon as one ends, and retries a refusal after 10 ms) while
/// project B sends a burst of 8 requests; B's latency under that flood is compared with B alone, round-robin, for each
/// admission policy in <see cref="Policies"/>. First, what a decode step costs by rows (the batch B decodes in).
/// </summary>
sealed class ProjectFairness(bool quick)
{
    const int PromptLength = 32, NewTokens = 32, BStreams = 8;

    /// <summary>The policies compared: the engine's default (<see cref="ProjectShares"/>: preemption and fair rows), without fair rows, without either (as before), and no policy.</summary>
    static IReadOnlyList<(string Name, InferenceOptions Options, bool Shares)> Policies =>
    [
        ($"ProjectShares: preemption and fair rows (the default, share {new InferenceOptions().ProjectShare})", new InferenceOptions { PrefixCacheBytes = 0 }, true),
        ("ProjectShares: preemption, no fair rows (FairRows false)", new InferenceOptions { PrefixCacheBytes = 0, FairRows = false }, true),
        ("ProjectShares without preemption or fair rows (before)", new InferenceOptions { PrefixCacheBytes = 0, Preemption = false, FairRows = false }, true),
        ("no policy (first come, first served)", new InferenceOptions { PrefixCacheBytes = 0 }, false),
    ];

    public async Task RunAsync(Action<string> line)
    {
        var root = Directory.CreateTempSubdirectory("bench-fairness-");
        try
        {
            var folder = Measure.SaveRandomBase(root, Measure.Config(quick));
            int rounds = quick ? 4 : 3, flood = 4 * new InferenceOptions().MaxBatch;
            StepTimes(line);
            var engines = Policies.Select(p => new InferenceEngine(p.Options, policy: p.Shares ? new ProjectShares(p.Options) : null)).ToList();
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
                line("| policy | B alone: first token p95 | request p95 | B under A's flood: first token p95 | request p95 | request p95 ÷ alone | A's refusals (429) | A's tokens/s | preemptions |");
                line("|---|---|---|---|---|---|---|---|---|");
                for (int e = 0; e < engines.Count; e++)
                {
                    string Ms(List<Burst> runs, Func<Burst, double> f) => new Spread(runs.Select(f).ToList()).Format("F0") + " ms";
                    var ratio = new Spread(Enumerable.Range(0, rounds).Select(i => flooded[e][i].RequestP95 / alone[e][i].RequestP95).ToList());
                    line($"| {Policies[e].Name} | {Ms(alone[e], r => r.FirstTokenP95 * 1e3)} | {Ms(alone[e], r => r.RequestP95 * 1e3)} | " +
                         $"{Ms(flooded[e], r => r.FirstTokenP95 * 1e3)} | {Ms(flooded[e], r => r.RequestP95 * 1e3)} | **{ratio.Format()}** | " +
                         $"{new Spread(flooded[e].Select(r => (double)r.Refused).ToList()).Format("F0")} | {new Spread(flooded[e].Select(r => r.FloodTokensPerSecond).ToList()).Format("F0")} | " +
                         $"{new Spread(flooded[e].Select(r => (double)r.Preemptions).ToList()).Format("F0")} |");
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

    /// <summary>
    /// Seconds of one decode step of the base model by running rows (8: B alone; 16-32: B beside A's rows), and of one
    /// prefill forward of a prompt (what A's churn adds to a step), without the engine around them (<see cref="BatchSteps"/>).
    /// </summary>
    void StepTimes(Action<string> line)
    {
        int[] rows = [8, 16, 24, 32];
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        using var model = Measure.RandomModel(Measure.Config(quick));
        var batches = rows.Select(r => new BatchSteps(model, r, PromptLength + NewTokens / 2)).ToList();
        try
        {
            var actions = batches.Select(b => (Action)b.Decode).Append(() => batches[0].Prefill(0, 1)).ToArray();
            int runs = quick ? 40 : 12;
            var times = Measure.RoundRobin(actions, runs);
            line($"Decode step by running rows ({PromptLength + NewTokens / 2} cached positions each) and one {PromptLength + NewTokens / 2}-token prompt's prefill forward, " +
                 $"{runs} round-robin runs each: median (lowest–highest), and the 10th percentile (on a busy machine nearer the step's own cost than the median):");
            line("");
            line("| forward | median (lowest–highest) | ÷ 8 rows' | 10th percentile | ÷ 8 rows' |");
            line("|---|---|---|---|---|");
            double Low(int i) => Measure.Percentile([.. times[i].Values], 0.1);
            for (int i = 0; i < actions.Length; i++)
                line($"| {(i < rows.Length ? $"decode, {rows[i]} rows" : "prefill of one prompt")} | {times[i].Median * 1e3:F1} ({times[i].Low * 1e3:F1}–{times[i].High * 1e3:F1}) ms | " +
                     $"{times[i].Median / times[0].Median:F2} | {Low(i) * 1e3:F1} ms | {Low(i) / Low(0):F2} |");
            line("");
        }
        finally
        {
            foreach (var b in batches) b.Dispose();
        }
    }

    record Burst(double FirstTokenP95, double RequestP95, int Refused, double FloodTokensPerSecond, long Preemptions);

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
        long preempted = engine.Preemptions;
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
        return new Burst(Measure.Percentile([.. b.Select(x => x.First)], 0.95), Measure.Percentile([.. b.Select(x => x.Total)], 0.95), refused, floodRate,
            engine.Preemptions - preempted);
    }

    static GenerationRequest Request(string folder, string project, int stream) =>
        new("fairness", folder, null, null, Measure.Letters(PromptLength, stream),
            new SamplingOptions(NewTokens, 0), Project: project);
}
