using AdapterService.Core.Adapters;
using AdapterService.Core.Builtins;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Benchmark 3, end to end through the engine: 1,000 registered adapters on disk, each request picking one at random
/// through an adapter cache that holds only a fifth of them, against every request using the same adapter.
/// </summary>
sealed class CacheServing(bool quick)
{
    readonly int registered = quick ? 200 : 1000, requests = quick ? 64 : 256;

    public async Task RunAsync(Action<string> line)
    {
        var root = Directory.CreateTempSubdirectory("bench-cache-");
        try
        {
            var config = BuiltinModels.TinyDemo.Config;
            var baseFolder = Path.Combine(root.FullName, "base");
            long adapterBytes;
            using (var scope = NewDisposeScope())
            using (var model = Measure.RandomModel(config))
            {
                ModelFolder.Save(model, baseFolder);
                for (int i = 0; i < registered; i++)
                {
                    using var adapter = Measure.RandomAdapter(model, 8, i);
                    adapter.Save(Path.Combine(root.FullName, $"a{i}"));
                }
                adapterBytes = Measure.RandomAdapter(model, 8, 0).ParameterCount * 4;
            }
            line($"## 3. {registered} registered adapters, a random one per request, through the adapter cache");
            line($"model: {BuiltinModels.TinyDemo.Id} shape, {requests} requests of 16 tokens at once (batches of 32); cache budget {registered / 5} adapters");

            var options = new InferenceOptions { AdapterCacheBytes = adapterBytes * registered / 5 };
            var random = new Random(1);
            int[] picks = Enumerable.Range(0, requests).Select(_ => random.Next(registered)).ToArray();
            using var single = new InferenceEngine(options);
            using var many = new InferenceEngine(options);
            await RunAllAsync(single, _ => 0);                             // warm-up: base model loaded, code jitted
            await RunAllAsync(many, _ => 0);
            double one = await RunAllAsync(single, _ => 0);
            double spread = await RunAllAsync(many, i => picks[i]);

            line("");
            line("| measurement | tokens/s | ratio |");
            line("|---|---|---|");
            line($"| every request with the same adapter | {one:F0} | 1 |");
            line($"| a random adapter of {registered} per request | {spread:F0} | **{spread / one:F3}** of one adapter (target ≥ 0.7) |");
            line($"| cache: hits {many.Adapters.Hits}, misses {many.Adapters.Misses}, holding {many.Adapters.Count} adapters ({many.Adapters.Bytes / 1024} KiB) | | |");

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
