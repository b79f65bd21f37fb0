using System.Diagnostics;
using AdapterService.Core.Inference;

namespace AdapterService.Benchmarks;

/// <summary>
/// 32 requests sharing a 512-token system prompt (each with its own 16-token user turn), sent at once after one request
/// with the same system prompt has finished (as in a service that has seen it before), through the engine with and
/// without a prefix cache (<see cref="Variants"/>), round-robin over a few rounds; every round's user turns are new.
/// Prefill throughput: the burst's prompt tokens over the time until its last first token. The greedy outputs of every
/// variant are compared with the first variant's.
/// </summary>
sealed class PrefixSharing(bool quick)
{
    const int Requests = 32, UserTurn = 16, NewTokens = 8;
    int SystemPrompt => quick ? 128 : 512;

    /// <summary>The engines compared; the first is the reference for the outputs and the throughput ratios.</summary>
    public static IReadOnlyList<(string Name, InferenceOptions Options)> Variants =>
    [
        ("no prefix cache (chunked prefill)", new InferenceOptions { PrefixCacheBytes = 0 }),
        ($"prefix cache (engine defaults: chunked prefill, {new InferenceOptions().PrefixCacheBytes >> 20} MB, {new InferenceOptions().PrefixBlockTokens}-token blocks)", new InferenceOptions()),
        ("no prefix cache, earlier scheduler (whole prompts as one block)", new InferenceOptions { ChunkedPrefill = false, PrefixCacheBytes = 0 }),
    ];

    public async Task RunAsync(Action<string> line)
    {
        var root = Directory.CreateTempSubdirectory("bench-prefix-");
        try
        {
            // Context for the system prompt, a user turn and the answer (the engine preallocates its KV cache over all of it).
            var config = Measure.Config(quick) with { MaxPositionEmbeddings = SystemPrompt + UserTurn + NewTokens + 24 };
            var folder = Measure.SaveRandomBase(root, config);
            int rounds = quick ? 2 : 3;
            var system = Enumerable.Range(0, SystemPrompt).Select(i => 'a' + (i * 11 + 3) % 26).ToList();
            List<int> Prompt(int round, int request) => [.. system, .. Enumerable.Range(0, UserTurn).Select(i => 'A' + (i * 5 + request * 3 + round * 7) % 26)];

            var engines = Variants.Select(v => new InferenceEngine(v.Options)).ToList();
            try
            {
                var rates = engines.Select(_ => new List<double>()).ToList();
                var outputs = engines.Select(_ => new List<string>()).ToList();
                var cached = engines.Select(_ => new List<double>()).ToList();   // per burst: prompt tokens served from the prefix cache
                foreach (var engine in engines) await GenerateAsync(engine, folder, Prompt(-1, 0));   // warm-up, and the system prompt seen once
                for (int round = 0; round < rounds; round++)
                    for (int e = 0; e < engines.Count; e++)
                    {
                        var prompts = Enumerable.Range(0, Requests).Select(r => Prompt(round, r)).ToList();
                        var clock = Stopwatch.StartNew();
                        var firstTokens = new double[Requests];
                        var answers = await Task.WhenAll(prompts.Select((p, r) => GenerateAsync(engines[e], folder, p, () => firstTokens[r] = clock.Elapsed.TotalSeconds)));
                        rates[e].Add(prompts.Sum(p => p.Count) / firstTokens.Max());
                        outputs[e].AddRange(answers.Select(a => a.Text));
                        cached[e].Add(answers.Sum(a => a.Cached) / (double)prompts.Sum(p => p.Count));
                    }

                line($"## Shared system prompt: {Requests} requests, a {SystemPrompt}-token system prompt + a {UserTurn}-token user turn each, {NewTokens} new tokens, greedy, base model of benchmark 1 (fp32)");
                line($"The system prompt was served once before each burst; {rounds} rounds (new user turns each), variants in turn; prefill throughput = the burst's prompt tokens ÷ time to its last first token; median (lowest–highest).");
                line("");
                line("| engine | prefill tokens/s | ÷ no cache, within each round | prompt tokens from the cache | outputs equal to the first row's |");
                line("|---|---|---|---|---|");
                for (int e = 0; e < engines.Count; e++)
                {
                    int same = outputs[e].Zip(outputs[0]).Count(p => p.First == p.Second);
                    var ratio = new Spread(rates[e].Zip(rates[0], (a, b) => a / b).ToList());
                    line($"| {Variants[e].Name} | {new Spread(rates[e]).Format("F0")} | {(e == 0 ? "1" : Variants[e].Options.PrefixCacheBytes > 0 ? $"**{ratio.Format()}** (target ≥ 4)" : ratio.Format())} | {new Spread(cached[e]).Median:P0} | {same} of {outputs[e].Count} |");
                }
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

    /// <summary>One request of the project "bench" (the prefix cache is partitioned by project): its text and the prompt tokens it had from the cache.</summary>
    static async Task<(string Text, int Cached)> GenerateAsync(InferenceEngine engine, string folder, List<int> prompt, Action? firstToken = null)
    {
        var request = new GenerationRequest("prefix", folder, null, null, prompt, new SamplingOptions(NewTokens, 0), Project: "bench");
        var text = new System.Text.StringBuilder();
        bool first = true;
        int cached = 0;
        await foreach (var chunk in engine.Generate(request))
        {
            if (first && chunk.CompletionTokens > 0) { firstToken?.Invoke(); first = false; }
            text.Append(chunk.Text);
            cached = Math.Max(cached, chunk.CachedTokens);
        }
        return (text.ToString(), cached);
    }
}
