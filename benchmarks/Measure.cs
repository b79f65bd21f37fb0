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
    public static double[] Interleaved(Action[] actions, int repeats) => RoundRobin(actions, repeats).Select(s => s.Median).ToArray();

    /// <summary>
    /// Seconds of each action in every round of a round-robin run (A B C A B C …, after a warm-up round), so that a
    /// ratio can be taken within each round (<see cref="Ratio"/>) and its spread over the rounds reported.
    /// </summary>
    public static Spread[] RoundRobin(Action[] actions, int repeats)
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
        return times.Select(t => new Spread(t)).ToArray();
    }

    /// <summary>
    /// <paramref name="f"/> of the rounds' values of several sample sets (same rounds), per round: its median and range.
    /// A ratio taken within a round compares measurements made seconds apart, so a load change moves both sides alike.
    /// </summary>
    public static Spread PerRound(Func<int, double> f, int rounds) => new(Enumerable.Range(0, rounds).Select(f).ToList());

    /// <summary><paramref name="numerator"/> ÷ <paramref name="denominator"/> per round (median, range).</summary>
    public static Spread Ratio(Spread numerator, Spread denominator) =>
        PerRound(i => numerator.Values[i] / denominator.Values[i], numerator.Values.Count);

    /// <summary>GB/s of reading memory: the sum of a 256 MB float32 tensor (far beyond any cache), one pass.</summary>
    public sealed class Bandwidth : IDisposable
    {
        readonly Tensor big = randn(64L << 20).DetachFromDisposeScope();
        public long Bytes => big.numel() * 4;
        public void Read() { using var s = big.sum(); s.item<float>(); }
        public void Dispose() => big.Dispose();
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

    /// <summary>A prompt of <paramref name="length"/> lowercase letters (byte tokens), different for each <paramref name="stream"/>.</summary>
    public static List<int> Letters(int length, int stream) => Enumerable.Range(0, length).Select(i => 'a' + (i * 7 + stream) % 26).ToList();

    public static long Parameters(LlamaForCausalLM model) => model.parameters().Sum(p => p.numel());

    public static double Percentile(List<double> values, double p)
    {
        var sorted = values.Order().ToList();
        return sorted.Count == 0 ? double.NaN : sorted[(int)Math.Min(sorted.Count - 1, Math.Round(p * (sorted.Count - 1)))];
    }
}

/// <summary>A value measured once per round (an action's seconds, a ratio): the median over the rounds and the range (lowest, highest).</summary>
sealed record Spread(IReadOnlyList<double> Values)
{
    public double Median => Values.Count % 2 == 1 ? Values.Order().ElementAt(Values.Count / 2)
        : Values.Order().Skip(Values.Count / 2 - 1).Take(2).Average();
    public double Low => Values.Min();
    public double High => Values.Max();
    /// <summary>"1.23 (1.10–1.31)": the median and, in brackets, the range over the rounds.</summary>
    public string Format(string format = "F2") => $"{Median.ToString(format)} ({Low.ToString(format)}–{High.ToString(format)})";
}
