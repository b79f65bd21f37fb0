using System.Diagnostics;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Training;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Four LoRA jobs on one base, trained three ways: fused (one model, <see cref="FusedTrainer"/>, once per share of
/// layers recomputed in the backward pass), one after another
/// (one model, each job's steps in turn), and at once as separate trainings each with its own copy of the base on its
/// own thread (what a queue with four workers does). Each job trains 128-token micro-batches. Total tokens/s is timed
/// round-robin, a few steps of each way per round; peak memory is each way's process RSS peak over its own baseline,
/// measured in a child process per way (a process's peak cannot be reset between ways that share it).
/// </summary>
sealed class FusedTraining(bool quick)
{
    const int Jobs = 4, Tokens = 128, Rank = 16;
    readonly LlamaConfig config = quick
        ? new LlamaConfig { VocabSize = 259, HiddenSize = 256, IntermediateSize = 704, NumHiddenLayers = 4, NumAttentionHeads = 4, MaxPositionEmbeddings = 256 }
        : new LlamaConfig { VocabSize = 259, HiddenSize = 768, IntermediateSize = 2048, NumHiddenLayers = 12, NumAttentionHeads = 12, MaxPositionEmbeddings = 256 };
    int StepsPerRound => quick ? 2 : 3;
    int Rounds => quick ? 2 : 3;

    /// <summary>The shares of layers a fused step recomputes that are measured (the service's default among them).</summary>
    static readonly double[] Shares = new[] { FusedTrainer.DefaultCheckpointShare, 0, 0.5, 0.75, 1 }.Distinct().Order().ToArray();

    static string FusedWay(double share) => FormattableString.Invariant($"fused:{share}");

    public static readonly string[] Ways = ["alone", .. Shares.Select(FusedWay), "sequential", "separate"];

    static List<TokenizedExample> Data(int job)
    {
        var random = new Random(job);
        return Enumerable.Range(0, 16).Select(_ =>
            new TokenizedExample(Enumerable.Range(0, Tokens + 1).Select(_ => random.Next(3, 259)).ToArray(), Enumerable.Repeat(true, Tokens + 1).ToArray())).ToList();
    }

    static LanguageModelTrainer Trainer(LlamaForCausalLM model, int job)
    {
        var adapter = TrainableAdapter.Create(model, new LoraConfig { Rank = Rank, Alpha = 2 * Rank, TargetModules = ["all-linear"] }, seed: job);
        var trainer = new LanguageModelTrainer(model, adapter, Data(job), new Hyperparameters(1000, 1, 1e-3), padId: 0, seed: job);
        trainer.BeginRun();
        return trainer;
    }

    /// <summary>Steps of each way, as actions over models and trainers made once.</summary>
    sealed class Setup : IDisposable
    {
        readonly List<IDisposable> owned = [];
        public Action Alone = () => { }, Sequential = () => { }, Separate = () => { };
        /// <summary>Fused steps, by the way's name (<see cref="FusedWay"/>).</summary>
        public Dictionary<string, Action> Fused = [];

        public Setup(FusedTraining b, string[] ways, int steps)
        {
            if (ways.Contains("alone") || ways.Any(w => w.StartsWith("fused:", StringComparison.Ordinal)) || ways.Contains("sequential"))
            {
                var shared = Own(Measure.RandomModel(b.config));
                if (ways.Contains("alone"))
                {
                    var one = Own(Trainer(shared, 0));
                    Alone = () => { for (int s = 0; s < steps; s++) FusedTrainer.Step(shared, [one]); };
                }
                foreach (double share in Shares.Where(share => ways.Contains(FusedWay(share))))
                {
                    var fused = Enumerable.Range(0, Jobs).Select(j => Own(Trainer(shared, j))).ToList();
                    Fused[FusedWay(share)] = () => { for (int s = 0; s < steps; s++) Check(FusedTrainer.Step(shared, fused, share)); };
                }
                if (ways.Contains("sequential"))
                {
                    var sequential = Enumerable.Range(0, Jobs).Select(j => Own(Trainer(shared, j))).ToList();
                    Sequential = () => { foreach (var t in sequential) for (int s = 0; s < steps; s++) Check(FusedTrainer.Step(shared, [t])); };
                }
            }
            if (ways.Contains("separate"))
            {
                var copies = Enumerable.Range(0, Jobs).Select(_ => Own(Measure.RandomModel(b.config))).ToList();
                var separate = copies.Select((m, j) => Own(Trainer(m, j))).ToList();
                Separate = () =>
                {
                    var threads = Enumerable.Range(0, Jobs).Select(j => new Thread(() =>
                    {
                        for (int s = 0; s < steps; s++) Check(FusedTrainer.Step(copies[j], [separate[j]]));
                    })).ToList();
                    threads.ForEach(t => t.Start());
                    threads.ForEach(t => t.Join());
                };
            }
        }

        static void Check(IReadOnlyList<FusedStepOutcome> outcomes)
        {
            if (outcomes.FirstOrDefault(o => o.Error is not null) is { } failed) throw failed.Error!;
        }

        T Own<T>(T item) where T : IDisposable
        {
            owned.Add(item);
            return item;
        }

        public void Dispose()
        {
            foreach (var o in owned.AsEnumerable().Reverse()) o.Dispose();
        }
    }

    public void Run(Action<string> line)
    {
        long parameters;
        using (var probe = Measure.RandomModel(config)) parameters = Measure.Parameters(probe);
        line($"## Fused training: {Jobs} LoRA jobs on one base");
        line("");
        line($"Llama-shaped model, random weights: {parameters / 1e6:F0}M parameters (hidden {config.HiddenSize}, {config.NumHiddenLayers} layers); "
             + $"each job LoRA r={Rank} on all linear layers, AdamW, a micro-batch of one {Tokens}-token row per step. "
             + $"Timed round-robin: {Rounds} rounds, each running {StepsPerRound} steps of every job in each way; medians.");
        line("");

        string loadBefore = File.ReadAllText("/proc/loadavg").Trim();
        using var setup = new Setup(this, Ways, StepsPerRound);
        var fusedWays = Shares.Select(FusedWay).ToList();
        var seconds = Measure.Interleaved([.. fusedWays.Select(w => setup.Fused[w]), setup.Sequential, setup.Separate], Rounds);
        var ceiling = ForwardCeiling();
        double tokens = (double)Jobs * StepsPerRound * Tokens;
        var rate = Ways.Skip(1).Zip(seconds, (way, s) => (way, tokens / s)).ToDictionary();
        var memory = Ways.ToDictionary(w => w, PeakMegabytes);

        string Name(string way) => way switch
        {
            "sequential" => "one after another (one base)",
            "separate" => "at once, separate copies of the base (4 threads)",
            _ => $"fused (one base), {double.Parse(way["fused:".Length..], System.Globalization.CultureInfo.InvariantCulture):P0} of the layers recomputed",
        };
        double best = Math.Max(rate["sequential"], rate["separate"]);
        line("| way | total tokens/s | vs the better unfused way | vs the ceiling | peak memory (RSS over baseline) | vs one job alone |");
        line("|---|---:|---:|---:|---:|---:|");
        foreach (var way in Ways.Skip(1))
            line($"| {Name(way)} | {rate[way]:F0} | {rate[way] / best:F2} | {rate[way] / best / ceiling:F2} | {memory[way]:F0} MB | {memory[way] / memory["alone"]:F2}× |");
        line($"| one job alone (memory reference) | | | | {memory["alone"]:F0} MB | 1.00× |");
        line("");
        line($"Ceiling: the frozen base's forward pass alone (no adapter, no gradients) over the {Jobs} micro-batches as one [{Jobs}, {Tokens}] batch "
             + $"runs {ceiling:F2}× the tokens/s of {Jobs} separate [1, {Tokens}] passes one after another: the most fusing the base can gain from larger matmuls. "
             + "\"vs the ceiling\" is a way's tokens/s over the better unfused way's, divided by that.");
        line("");
        foreach (double share in Shares)
        {
            string way = FusedWay(share);
            double speed = rate[way] / best / ceiling, peak = memory[way] / memory["alone"];
            line($"Fused, {share:P0} of the layers recomputed{(share == FusedTrainer.DefaultCheckpointShare ? " (the default, `Workers:FusedCheckpointing`)" : "")}: "
                 + $"{rate[way] / best:F2}× the better unfused way = {speed:F2}× the ceiling (target ≥ 0.95, {(speed >= 0.95 ? "met" : "missed")}); "
                 + $"peak memory {peak:F2}× one job's (target ≤ 1.5, {(peak <= 1.5 ? "met" : "missed")}).");
        }
        line("");
        line($"Load average (1, 5, 15 min) before: {loadBefore}; after: {File.ReadAllText("/proc/loadavg").Trim()} (the machine is shared).");
    }

    /// <summary>Tokens/s of one [jobs, tokens] forward pass over those of jobs [1, tokens] passes, timed round-robin.</summary>
    double ForwardCeiling()
    {
        using var scope = NewDisposeScope();
        using var model = Measure.RandomModel(config);
        using var noGrad = no_grad();
        var rows = Enumerable.Range(0, Jobs).Select(j => randint(3, 259, [1, Tokens], ScalarType.Int64)).ToList();
        var batch = cat(rows.ToArray(), 0);
        var seconds = Measure.Interleaved([
            () => { using (NewDisposeScope()) model.forward(batch); },
            () => { foreach (var r in rows) using (NewDisposeScope()) model.forward(r); },
        ], Rounds * StepsPerRound);
        return seconds[1] / seconds[0];
    }

    /// <summary>A child process runs one way (two steps of each job) and reports its RSS peak over its RSS before building anything.</summary>
    double PeakMegabytes(string way)
    {
        var start = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true };
        foreach (var a in (string[])["--fusion-memory", way, .. quick ? ["--quick"] : Array.Empty<string>()]) start.ArgumentList.Add(a);
        using var child = Process.Start(start)!;
        string output = child.StandardOutput.ReadToEnd();
        child.WaitForExit();
        var last = output.Trim().Split('\n')[^1];
        return child.ExitCode == 0 && double.TryParse(last, System.Globalization.CultureInfo.InvariantCulture, out var mb)
            ? mb : throw new InvalidOperationException($"memory run of {way} failed: {output}");
    }

    /// <summary>The child's side of <see cref="PeakMegabytes"/>: prints the peak in MB.</summary>
    public void MeasureMemory(string way, Action<string> print)
    {
        long baseline = Status("VmRSS");
        using (var setup = new Setup(this, [way], steps: 2))
        {
            var run = way switch { "alone" => setup.Alone, "sequential" => setup.Sequential, "separate" => setup.Separate, _ => setup.Fused[way] };
            run();
        }
        print((( Status("VmHWM") - baseline) / 1024.0).ToString("F1", System.Globalization.CultureInfo.InvariantCulture));
    }

    /// <summary>A /proc/self/status field in kB.</summary>
    static long Status(string field) =>
        long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith(field + ":", StringComparison.Ordinal)).Split(':')[1].Trim().Split(' ')[0]);
}
