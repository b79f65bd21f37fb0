using AdapterService.Core.Adapters;
using AdapterService.Core.Builtins;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Benchmark 3, end to end through the engine: 10,000 registered adapters on disk (tiny-llama-demo shape, LoRA r 8 on
/// q_proj and v_proj: about 640 MB, in a temporary folder deleted afterwards), each request picking one at random
/// through an adapter cache that holds only a fifth of them, against every request using the same adapter. The two
/// alternate over several rounds (fresh random picks each round) and the ratio is taken within each round.
/// </summary>
sealed class CacheServing(bool quick)
{
    readonly int registered = quick ? 500 : 10_000, requests = quick ? 64 : 256, rounds = quick ? 2 : 3;

    public async Task RunAsync(Action<string> line)
    {
        var root = Directory.CreateTempSubdirectory("bench-cache-");
        try
        {
            var config = BuiltinModels.TinyDemo.Config;
            var baseFolder = Path.Combine(root.FullName, "base");
            long adapterBytes;
            var clock = System.Diagnostics.Stopwatch.StartNew();
            using (var scope = NewDisposeScope())
            using (var model = Measure.RandomModel(config))
            {
                ModelFolder.Save(model, baseFolder);
                // One adapter redrawn and saved under each name (the same shapes; drawing its layers anew each time only costs).
                using var adapter = Measure.RandomAdapter(model, 8, 0);
                adapterBytes = adapter.ParameterCount * 4;
                for (int i = 0; i < registered; i++)
                {
                    using var g = new Generator((ulong)i + 7);
                    using (no_grad())
                    using (NewDisposeScope())
                        foreach (var p in adapter.Parameters()) p.normal_(0, 0.02, g);
                    adapter.Save(Path.Combine(root.FullName, $"a{i}"));
                }
            }
            double written = clock.Elapsed.TotalSeconds;
            long disk = root.EnumerateFiles("*", SearchOption.AllDirectories).Where(f => f.Directory!.Name != "base").Sum(f => f.Length);
            line($"## 3. {registered:N0} registered adapters, a random one per request, through the adapter cache");
            line($"model: {BuiltinModels.TinyDemo.Id} shape; adapters LoRA r 8 on q_proj, v_proj ({adapterBytes / 1024} KiB of weights each; {disk / 1e6:F0} MB on disk in all, written in {written:F0} s and deleted afterwards); " +
                 $"{requests} requests of 16 new tokens at once (batches of 32); cache budget {registered / 5:N0} adapters; {rounds} rounds, each: one adapter, then random adapters");

            var options = new InferenceOptions { AdapterCacheBytes = adapterBytes * registered / 5, PrefixCacheBytes = 0 };   // every request has the same prompt
            var random = new Random(1);
            using var single = new InferenceEngine(options);
            using var many = new InferenceEngine(options);
            await RunAllAsync(single, _ => 0);                             // warm-up: base model loaded, code jitted
            await RunAllAsync(many, _ => 0);
            var one = new List<double>();
            var spread = new List<double>();
            for (int round = 0; round < rounds; round++)
            {
                int[] picks = Enumerable.Range(0, requests).Select(_ => random.Next(registered)).ToArray();
                one.Add(await RunAllAsync(single, _ => 0));
                spread.Add(await RunAllAsync(many, i => picks[i]));
            }
            var ratio = new Spread(spread.Zip(one, (s, o) => s / o).ToList());

            line("");
            line("| measurement | tokens/s (median) | ratio within each round: median (lowest–highest) |");
            line("|---|---|---|");
            line($"| every request with the same adapter | {new Spread(one).Median:F0} | 1 |");
            line($"| a random adapter of {registered:N0} per request | {new Spread(spread).Median:F0} | **{ratio.Format("F3")}** of one adapter (target ≥ 0.8) |");
            line($"| cache after the rounds: hits {many.Adapters.Hits}, misses {many.Adapters.Misses}, holding {many.Adapters.Count} adapters ({many.Adapters.Bytes / 1024} KiB) | | |");

            async Task<double> RunAllAsync(InferenceEngine engine, Func<int, int> adapterOf)
            {
                var clock = System.Diagnostics.Stopwatch.StartNew();
                var runs = Enumerable.Range(0, requests).Select(async i =>
                {
                    int a = adapterOf(i);
                    var request = new GenerationRequest("bench", baseFolder, $"a{a}", Path.Combine(root.FullName, $"a{a}"),
                        [ByteTokenizer.Begin, .. "Hello there"u8.ToArray().Select(b => (int)b)], new SamplingOptions(16, 0));
                    int tokens = 0;
                    await foreach (var chunk in engine.Generate(request)) tokens = chunk.CompletionTokens;
                    return tokens;
                });
                int total = (await Task.WhenAll(runs)).Sum();
                return total / clock.Elapsed.TotalSeconds;
            }
        }
        finally
        {
            root.Delete(recursive: true);
        }
    }
}
