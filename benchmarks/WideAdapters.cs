using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// 32 distinct LoRA adapters of rank 16 and of rank 64 on all seven projections (q, k, v, o, gate, up, down: what users
/// train), one per row of a decode step on benchmark 1's fp32 base. On a small base these adapters' bytes rival the
/// base's, and a decode step is bound by reading bytes, not by arithmetic: each step is set against the time to read
/// the base's matrices and the distinct adapters' A and B once at the memory bandwidth measured in the same run (the
/// sum of a 256 MB tensor, round-robin with the steps).
/// </summary>
sealed class WideAdapters(bool quick)
{
    const int Rows = 32, Prompt = 64;
    static readonly HashSet<string> Targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    static readonly int[] Ranks = [16, 64];

    public void Run(Action<string> line)
    {
        using var noGrad = no_grad();
        using var model = Measure.RandomModel(Measure.Config(quick));
        using var steps = new BatchSteps(model, Rows, Prompt);
        var c = model.Config;
        var layers = model.LinearLayers().ToList();
        double baseBytes = layers.Sum(l => (double)l.Layer.weight.numel() * l.Layer.weight.element_size());
        double kvBytes = 2.0 * c.NumHiddenLayers * Rows * c.KeyValueHeads * (Prompt + 1) * c.HeadDim * 4;
        var adapted = layers.Where(l => Targets.Contains(l.Path.Split('.')[^1])).ToList();
        double AdapterBytes(int rank) => adapted.Sum(l => (double)rank * (l.Layer.InFeatures + l.Layer.OutFeatures) * 4);   // one adapter's A and B, fp32

        var gathered = Ranks.Select(r => Random(adapted, r)).ToList();
        using var bandwidth = new Measure.Bandwidth();
        int repeats = quick ? 3 : 7;
        var t = Measure.RoundRobin([
            () => steps.With(null, steps.Decode),
            .. gathered.Select(g => (Action)(() => steps.With(g, steps.Decode))),
            bandwidth.Read,
        ], repeats);
        var read = t[^1];
        double GBps(int round) => bandwidth.Bytes / read.Values[round] / 1e9;
        var rate = Measure.PerRound(GBps, repeats);

        line($"## {Rows} adapters of rank {string.Join(" and ", Ranks)} on all seven projections, one per row of a decode step");
        line($"model: benchmark 1's ({Measure.Parameters(model) / 1e6:F1}M parameters, hidden {c.HiddenSize}, {c.NumHiddenLayers} layers), fp32; {Rows} rows after {Prompt} tokens, each with its own adapter gathered as the engine gathers a steady batch.");
        line($"Memory bandwidth measured in the same run, round-robin with the steps (sum of a {bandwidth.Bytes >> 20} MB float32 tensor): **{rate.Format("F1")} GB/s**.");
        line($"Median of {repeats} rounds; ratios within each round: median (lowest–highest).");
        line("");
        line("| | bytes | ÷ base |");
        line("|---|---:|---:|");
        line($"| base: every linear layer's matrix (fp32) | {baseBytes / 1e6:F0} MB | 1 |");
        foreach (int r in Ranks)
        {
            line($"| one adapter, rank {r} | {AdapterBytes(r) / 1e6:F1} MB | {AdapterBytes(r) / baseBytes:F3} |");
            line($"| {Rows} distinct adapters, rank {r} | {Rows * AdapterBytes(r) / 1e6:F0} MB | **{Rows * AdapterBytes(r) / baseBytes:F2}** |");
        }
        line($"| the step's KV cache reads ({Rows} rows × {Prompt + 1} positions; not in the issue's bound) | {kvBytes / 1e6:F0} MB | {kvBytes / baseBytes:F2} |");
        line("");
        line("| decode step | ms per step | bound: (base + distinct adapters) ÷ bandwidth | step ÷ bound | adapter part (step − base step) | its bound: adapters ÷ bandwidth | part ÷ its bound |");
        line("|---|---:|---:|---|---:|---:|---|");
        line($"| base alone | {t[0].Median * 1e3:F1} | {baseBytes / rate.Median / 1e6:F1} ms | {Measure.PerRound(i => t[0].Values[i] / (baseBytes / 1e9 / GBps(i)), repeats).Format()} | | | |");
        for (int k = 0; k < Ranks.Length; k++)
        {
            int r = Ranks[k];
            var step = t[k + 1];
            double adapters = Rows * AdapterBytes(r);
            var stepBound = Measure.PerRound(i => step.Values[i] / ((baseBytes + adapters) / 1e9 / GBps(i)), repeats);
            var part = Measure.PerRound(i => step.Values[i] - t[0].Values[i], repeats);
            var partBound = Measure.PerRound(i => (step.Values[i] - t[0].Values[i]) / (adapters / 1e9 / GBps(i)), repeats);
            line($"| {Rows} adapters, rank {r} | {step.Median * 1e3:F1} | {(baseBytes + adapters) / rate.Median / 1e6:F1} ms | {stepBound.Format()} | " +
                 $"{part.Median * 1e3:F1} ms | {adapters / rate.Median / 1e6:F1} ms | **{partBound.Format()}** (target ≤ 1.5) |");
        }
        foreach (var g in gathered) foreach (var l in g.Values) ((RowLora)l).Dispose();
    }

    /// <summary>{Rows} random adapters of rank <paramref name="rank"/> (A, B ~ N(0, 0.02²), alpha = 2r) gathered per layer, one layer at a time (the originals freed as it goes).</summary>
    static Dictionary<string, ILinearAdapter> Random(List<(string Path, AdaptableLinear Layer)> layers, int rank)
    {
        var result = new Dictionary<string, ILinearAdapter>();
        foreach (var (path, layer) in layers)
        {
            using var scope = NewDisposeScope();
            var rows = Enumerable.Range(0, Rows).Select(_ =>
                (LoraWeights?)new LoraWeights(randn(rank, layer.InFeatures) * 0.02, randn(layer.OutFeatures, rank) * 0.02, 2.0)).ToList();
            var gathered = new RowLora(rows, layer.InFeatures, layer.OutFeatures);
            gathered.DetachFromScope();
            result[path] = gathered;
        }
        return result;
    }
}
