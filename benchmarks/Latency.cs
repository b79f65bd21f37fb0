using System.Diagnostics;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>Benchmark 5: time to first token and time between tokens at 1, 8 and 32 concurrent streams, through the engine.</summary>
sealed class Latency(bool quick)
{
    const int PromptLength = 32, NewTokens = 32;

    public async Task RunAsync(Action<string> line)
    {
        var root = Directory.CreateTempSubdirectory("bench-latency-");
        try
        {
            var config = Measure.Config(quick);
            var folder = Measure.SaveRandomBase(root, config);
            line($"## 5. Latency: {PromptLength}-token prompts, {NewTokens} new tokens, greedy, base model of benchmark 1");
            line("");
            line("| concurrent streams | prefill | time to first token p50 / p95 | time between tokens p50 / p95 | tokens/s (all streams) |");
            line("|---|---|---|---|---|");
            // Prompts prefilled together (the default) and, side by side, one at a time as before batched prefill.
            foreach (var (name, prefillTokens) in new[] { ("together", new InferenceOptions().PrefillTokens), ("one at a time", 1) })
            {
                using var engine = new InferenceEngine(new InferenceOptions { PrefillTokens = prefillTokens });
                await RunAsync(engine, folder, 1);   // warm-up
                foreach (int streams in new[] { 1, 8, 32 })
                {
                    var (ttft, gaps, tps) = await RunAsync(engine, folder, streams);
                    line($"| {streams} | {name} | {Measure.Percentile(ttft, 0.5) * 1000:F0} ms / {Measure.Percentile(ttft, 0.95) * 1000:F0} ms | " +
                         $"{Measure.Percentile(gaps, 0.5) * 1000:F1} ms / {Measure.Percentile(gaps, 0.95) * 1000:F1} ms | {tps:F0} |");
                }
            }
        }
        finally
        {
            root.Delete(recursive: true);
        }
    }

    static async Task<(List<double> Ttft, List<double> Gaps, double TokensPerSecond)> RunAsync(InferenceEngine engine, string folder, int streams)
    {
        var ttft = new List<double>();
        var gaps = new List<double>();
        var clock = Stopwatch.StartNew();
        var runs = Enumerable.Range(0, streams).Select(async s =>
        {
            var prompt = Enumerable.Range(0, PromptLength).Select(i => 'a' + (i * 7 + s) % 26).ToList();
            var request = new GenerationRequest("latency", folder, null, null, prompt, new SamplingOptions(NewTokens, 0));
            var started = clock.Elapsed.TotalSeconds;
            double? last = null;
            int lastTokens = 0, tokens = 0;
            await foreach (var chunk in engine.Generate(request))
            {
                double now = clock.Elapsed.TotalSeconds;
                lock (ttft)
                {
                    if (last is null) ttft.Add(now - started);
                    else gaps.Add((now - last.Value) / Math.Max(1, chunk.CompletionTokens - lastTokens));
                }
                (last, lastTokens, tokens) = (now, chunk.CompletionTokens, chunk.CompletionTokens);
            }
            return tokens;
        });
        int total = (await Task.WhenAll(runs)).Sum();
        return (ttft, gaps, total / clock.Elapsed.TotalSeconds);
    }
}
