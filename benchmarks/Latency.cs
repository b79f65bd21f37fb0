using System.Diagnostics;
using AdapterService.Core.Inference;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Benchmark 5, through the engine: time to first token and time between tokens for bursts of 1, 8, 32 and 64 streams
/// (all requests sent at once), for each scheduler in <see cref="Schedulers"/>, round-robin over a few rounds.
/// </summary>
sealed class Latency(bool quick)
{
    const int PromptLength = 32, NewTokens = 32;
    static readonly int[] Streams = [1, 8, 32, 64];

    /// <summary>The schedulers compared (engine settings): the earlier one, whole prompts prefilled as one block between decode steps, first; chunked prefill mixed with decode (the default); the same with a smaller step budget.</summary>
    public static IReadOnlyList<(string Name, InferenceOptions Options)> Schedulers =>
    [
        ("current (prefill as one block)", new InferenceOptions { ChunkedPrefill = false, PrefixCacheBytes = 0 }),
        ($"chunked prefill (StepTokens {new InferenceOptions().StepTokens}, PrefillSlots {new InferenceOptions().PrefillSlots})", new InferenceOptions { ChunkedPrefill = true, PrefixCacheBytes = 0 }),
        // A smaller step budget: shorter steps while prompts are prefilled, against more steps per prompt.
        ("chunked prefill (StepTokens 128)", new InferenceOptions { ChunkedPrefill = true, StepTokens = 128, PrefixCacheBytes = 0 }),
    ];

    public async Task RunAsync(Action<string> line)
    {
        var root = Directory.CreateTempSubdirectory("bench-latency-");
        try
        {
            var config = Measure.Config(quick);
            var folder = Measure.SaveRandomBase(root, config);
            int rounds = quick ? 2 : 3;
            var engines = Schedulers.Select(s => new InferenceEngine(s.Options)).ToList();
            try
            {
                foreach (var engine in engines) await RunAsync(engine, folder, 4);   // warm-up: base loaded, code jitted
                // results[scheduler][streams]: one Run per round
                var results = engines.Select(_ => Streams.ToDictionary(s => s, _ => new List<Run>())).ToList();
                for (int round = 0; round < rounds; round++)
                    foreach (int streams in Streams)
                        for (int e = 0; e < engines.Count; e++)
                            results[e][streams].Add(await RunAsync(engines[e], folder, streams));

                line($"## 5. Latency: bursts of {string.Join("/", Streams)} streams, {PromptLength}-token prompts, {NewTokens} new tokens, greedy, base model of benchmark 1 (fp32)");
                line($"Engine defaults (MaxBatch {new InferenceOptions().MaxBatch}: a burst of 64 runs as two waves). Every stream's requests are sent at once; {rounds} rounds, " +
                     "each running every burst size with every scheduler in turn; each cell is the median over the rounds (lowest–highest).");
                line("\"decode alone\": under the current scheduler, the median gap between a stream's tokens over the gaps in which no stream received its first token (no prompt was prefilled in them); every scheduler's p95 is divided by it (same round, same streams).");
                line("");
                line("| streams | scheduler | time to first token p50 | p95 | time between tokens p50 | p95 | decode alone | TBT p95 ÷ decode alone | tokens/s (all streams) |");
                line("|---|---|---|---|---|---|---|---|---|");
                foreach (int streams in Streams)
                    for (int e = 0; e < engines.Count; e++)
                    {
                        var runs = results[e][streams];
                        string Ms(Func<Run, double> f) => new Spread(runs.Select(f).ToList()).Format("F0") + " ms";
                        line($"| {streams} | {Schedulers[e].Name} | {Ms(r => r.TtftP50 * 1e3)} | {Ms(r => r.TtftP95 * 1e3)} | {Ms(r => r.GapP50 * 1e3)} | {Ms(r => r.GapP95 * 1e3)} | " +
                             $"{(e == 0 ? Ms(r => r.DecodeAlone * 1e3) : "")} | {OverAlone(e, streams).Format()} | {new Spread(runs.Select(r => r.TokensPerSecond).ToList()).Format("F0")} |");
                    }
                for (int e = 1; e < engines.Count; e++)
                {
                    var ratio = new Spread(Enumerable.Range(0, rounds).Select(i => results[e][32][i].TtftP50 / results[0][32][i].TtftP50).ToList());
                    line("");
                    line($"32-stream burst, {Schedulers[e].Name}: time to first token p50 ÷ the current scheduler's, within each round: **{ratio.Format()}** (target ≤ 0.5); " +
                         $"time between tokens p95 ÷ decode alone: **{OverAlone(e, 32).Format()}** (target ≤ 1.5).");
                }

                // A scheduler's time-between-tokens p95 over decode alone at the same stream count in the same round: the
                // current scheduler's gaps with no first token in them (it prefills only where it hands out first tokens;
                // chunked prefill also runs chunks in steps that end no prompt, so its own such gaps are not decode alone).
                Spread OverAlone(int e, int streams) => new(Enumerable.Range(0, rounds).Select(i => results[e][streams][i].GapP95 / results[0][streams][i].DecodeAlone).ToList());
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

    record Run(double TtftP50, double TtftP95, double GapP50, double GapP95, double DecodeAlone, double TokensPerSecond);

    static async Task<Run> RunAsync(InferenceEngine engine, string folder, int streams)
    {
        var firsts = new List<double>();                                  // when each stream received its first token
        var ttft = new List<double>();
        var gaps = new List<(double Start, double End, double PerToken)>();
        var clock = Stopwatch.StartNew();
        var runs = Enumerable.Range(0, streams).Select(async s =>
        {
            var prompt = Measure.Letters(PromptLength, s);
            var request = new GenerationRequest("latency", folder, null, null, prompt, new SamplingOptions(NewTokens, 0));
            var started = clock.Elapsed.TotalSeconds;
            double? last = null;
            int lastTokens = 0, tokens = 0;
            await foreach (var chunk in engine.Generate(request))
            {
                double now = clock.Elapsed.TotalSeconds;
                lock (ttft)
                {
                    if (last is null) { ttft.Add(now - started); firsts.Add(now); }
                    else gaps.Add((last.Value, now, (now - last.Value) / Math.Max(1, chunk.CompletionTokens - lastTokens)));
                }
                (last, lastTokens, tokens) = (now, chunk.CompletionTokens, chunk.CompletionTokens);
            }
            return tokens;
        });
        int total = (await Task.WhenAll(runs)).Sum();
        double seconds = clock.Elapsed.TotalSeconds;
        var perToken = gaps.Select(g => g.PerToken).ToList();
        var alone = gaps.Where(g => !firsts.Any(f => f > g.Start && f <= g.End)).Select(g => g.PerToken).ToList();
        return new Run(Measure.Percentile(ttft, 0.5), Measure.Percentile(ttft, 0.95), Measure.Percentile(perToken, 0.5), Measure.Percentile(perToken, 0.95),
            Measure.Percentile(alone, 0.5), total / seconds);
    }
}
