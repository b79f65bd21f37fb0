using System.Diagnostics;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

static class Measure
{
    /// <summary>GFLOP/s of a 2048² matmul in <paramref name="type"/> (fp32 by default), best of a few runs.</summary>
    public static double MatmulPeakGflops(ScalarType type = ScalarType.Float32, int runs = 5)
    {
        using var scope = NewDisposeScope();
        var a = randn(2048, 2048).to_type(type);
        var b = randn(2048, 2048).to_type(type);
        a.matmul(b).Dispose();
        double best = double.MaxValue;
        for (int i = 0; i < runs; i++)
        {
            var clock = Stopwatch.StartNew();
            a.matmul(b).Dispose();
            best = Math.Min(best, clock.Elapsed.TotalSeconds);
        }
        return 2.0 * 2048 * 2048 * 2048 / best / 1e9;
    }

    /// <summary>
    /// Seconds per call of each action: the median of <paramref name="repeats"/> runs, taken round-robin (A B C A B C …)
    /// after a warm-up, so drift on a shared machine moves every action alike.
    /// </summary>
    public static double[] Interleaved(Action[] actions, int repeats)
    {
        foreach (var action in actions) action();
        var times = actions.Select(_ => new List<double>()).ToArray();
        for (int r = 0; r < repeats; r++)
            for (int i = 0; i < actions.Length; i++)
            {
                var clock = Stopwatch.StartNew();
                actions[i]();
                times[i].Add(clock.Elapsed.TotalSeconds);
            }
        return times.Select(t => t.Order().ElementAt(t.Count / 2)).ToArray();
    }

    /// <summary>A Llama-shaped model with random weights (byte vocabulary, so generated tokens print).</summary>
    public static LlamaConfig Config(bool quick) => quick
        ? new LlamaConfig { VocabSize = ByteTokenizer.VocabSize, HiddenSize = 256, IntermediateSize = 704, NumHiddenLayers = 4, NumAttentionHeads = 4, MaxPositionEmbeddings = 256, EosTokenId = ByteTokenizer.End }
        : new LlamaConfig { VocabSize = ByteTokenizer.VocabSize, HiddenSize = 768, IntermediateSize = 2048, NumHiddenLayers = 12, NumAttentionHeads = 12, MaxPositionEmbeddings = 256, EosTokenId = ByteTokenizer.End };

    public static LlamaForCausalLM RandomModel(LlamaConfig config, long seed = 1) => Core.Models.RandomModel.Create(config, seed);

    /// <summary>A random model of <paramref name="config"/> saved as the folder <c>base</c> under <paramref name="root"/>; its path.</summary>
    public static string SaveRandomBase(DirectoryInfo root, LlamaConfig config)
    {
        var folder = Path.Combine(root.FullName, "base");
        using var scope = NewDisposeScope();
        using var model = RandomModel(config);
        ModelFolder.Save(model, folder);
        return folder;
    }

    /// <summary>A LoRA adapter with random A and B on q_proj and v_proj.</summary>
    public static LoraAdapter RandomAdapter(LlamaForCausalLM model, int rank, long seed)
    {
        var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = rank, Alpha = 2 * rank, TargetModules = ["q_proj", "v_proj"] }, seed);
        using var g = new Generator((ulong)seed + 7);
        using (no_grad())
        using (NewDisposeScope())
            foreach (var p in adapter.Parameters()) p.normal_(0, 0.02, g);
        return adapter;
    }

    public static long Parameters(LlamaForCausalLM model) => model.parameters().Sum(p => p.numel());

    public static double Percentile(List<double> values, double p)
    {
        var sorted = values.Order().ToList();
        return sorted.Count == 0 ? double.NaN : sorted[(int)Math.Min(sorted.Count - 1, Math.Round(p * (sorted.Count - 1)))];
    }
}
