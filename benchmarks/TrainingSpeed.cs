using System.Diagnostics;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Training;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Single-job training speed: LoRA (rank 16 on every attention and MLP projection) on a frozen Llama-shaped model with
/// random weights, 2,048 tokens per step, run through <see cref="LanguageModelTrainer"/> as a job runs it. Reports
/// tokens/s and model FLOP utilisation against a 2048² fp32 GEMM timed between the steps (so both see the same load),
/// where each phase of a step goes, and the options (packing, bf16, accumulation, checkpointing) side by side.
/// </summary>
/// <remarks>
/// Model FLOPs per step, counting only what training a LoRA adapter on a frozen base needs:
/// base 4·N·T (forward 2·N·T and input gradient 2·N·T; no weight gradients), N the matmul parameters (every projection and
/// the output head; the embedding is a lookup); attention 6·d·L·Σ n(n+1) over the sequences of length n (causal scores and
/// values: forward 2·d·n(n+1), backward twice that); LoRA 6·r·(in+out)·T per adapted layer (forward, input and weight gradients).
/// </remarks>
sealed class TrainingSpeed(bool quick, bool profileOnly = false)
{
    const int Rank = 16;
    readonly int steps = quick ? 3 : 6;

    public static LlamaConfig Config(bool quick) => quick
        ? new LlamaConfig { VocabSize = 4096, HiddenSize = 256, IntermediateSize = 704, NumHiddenLayers = 4, NumAttentionHeads = 4, MaxPositionEmbeddings = 512 }
        : new LlamaConfig { VocabSize = 32000, HiddenSize = 768, IntermediateSize = 2048, NumHiddenLayers = 12, NumAttentionHeads = 12, MaxPositionEmbeddings = 512 };

    public void Run(Action<string> line)
    {
        line("## Training speed: one LoRA job");
        Model("Llama-shaped model, random weights", Config(quick), rows: 8, length: 256, line, options: true);
        line("");
        Model($"built-in {BuiltinModels.TinyDemo.Id}", BuiltinModels.TinyDemo.Config, rows: 8, length: 256, line, options: false);
    }

    void Model(string name, LlamaConfig config, int rows, int length, Action<string> line, bool options)
    {
        using var model = BuiltinModels.RandomModel(config, 1);
        long matmul = config.LinearShapes().Sum(s => s.In * s.Out), all = model.parameters().Sum(p => p.numel());
        line($"### {name}: {all / 1e6:F1}M parameters ({matmul / 1e6:F1}M in matmuls), hidden {config.HiddenSize}, {config.NumHiddenLayers} layers, vocab {config.VocabSize}");
        line($"LoRA r={Rank} on q,k,v,o,gate,up,down; {rows} rows × {length} tokens = {rows * length} tokens per step; fp32 unless said");
        line("");
        line("| run | tokens/s | model GFLOP/s | MFU (fp32 GEMM peak) | GEMM peak GFLOP/s | final loss |");
        line("|---|---|---|---|---|---|");
        var data = Uniform(rows, length + 1, config.VocabSize, seed: 3);
        if (profileOnly)
        {
            Profile(model, config, data, rows, line);
            return;
        }
        Report("fp32", Time(model, config, data, rows, new TrainingSpeedOptions()), line);
        if (!options) return;
        Report("bf16 autocast", Time(model, config, data, rows, new TrainingSpeedOptions { Bf16 = true }), line);
        Report("gradient checkpointing", Time(model, config, data, rows, new TrainingSpeedOptions { GradientCheckpointing = true }), line);
        Report("accumulation 4 × 512 tokens", Time(model, config, data, rows, new TrainingSpeedOptions { MicroBatchSize = rows / 4 }), line);
        // Mixed lengths (16-256 tokens): packing trains the same tokens without computing padding.
        var mixed = Mixed(4 * rows, length + 1, config.VocabSize, seed: 4);
        Report("mixed lengths, padded rows", Time(model, config, mixed, 4 * rows, new TrainingSpeedOptions { Packing = false }), line);
        Report("mixed lengths, packed rows", Time(model, config, mixed, 4 * rows, new TrainingSpeedOptions { Packing = true }), line);
        line("");
        Profile(model, config, data, rows, line);
    }

    sealed record Timing(double TokensPerSecond, double Gflops, double Peak, double Loss);

    static void Report(string run, Timing t, Action<string> line) =>
        line($"| {run} | {t.TokensPerSecond:F0} | {t.Gflops:F1} | **{t.Gflops / t.Peak:P0}** | {t.Peak:F1} | {t.Loss:F4} |");

    /// <summary>Trains <see cref="steps"/> steps (after one warm-up step) with a GEMM timed after each; medians of both.</summary>
    Timing Time(LlamaForCausalLM model, LlamaConfig config, List<TokenizedExample> data, int batch, TrainingSpeedOptions options)
    {
        using var scope = NewDisposeScope();
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = Rank, Alpha = 2 * Rank, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }, 5);
        var hp = new Hyperparameters(steps + 1, batch, 1e-3);
        using var trainer = new LanguageModelTrainer(model, adapter, data, hp, padId: 0, seed: 1, options);
        var stepTimes = new List<double>();
        var gemm = new List<double>();
        var a = randn(2048, 2048);
        var b = randn(2048, 2048);
        var clock = Stopwatch.StartNew();
        long tokensBefore = 0;
        var tokens = new List<long>();
        // One epoch is one step (every example in one batch); the first is the warm-up.
        trainer.Run(p =>
        {
            stepTimes.Add(clock.Elapsed.TotalSeconds);
            tokens.Add(trainer.TrainedTokens - tokensBefore);
            tokensBefore = trainer.TrainedTokens;
            var g = Stopwatch.StartNew();
            a.matmul(b).Dispose();
            gemm.Add(g.Elapsed.TotalSeconds);
            clock.Restart();
        }, CancellationToken.None);
        double seconds = Median(stepTimes.Skip(1)), peak = 2.0 * 2048 * 2048 * 2048 / Median(gemm.Skip(1)) / 1e9;
        long trainedTokens = data.Sum(e => e.Ids.Length - 1L);
        return new Timing(trainedTokens / seconds, Flops(config, data) / seconds / 1e9, peak, trainer.LastLoss);
    }

    /// <summary>Model FLOPs of one pass over <paramref name="data"/> (see the class remarks).</summary>
    static double Flops(LlamaConfig c, List<TokenizedExample> data)
    {
        double tokens = data.Sum(e => e.Ids.Length - 1.0), matmul = c.LinearShapes().Sum(s => (double)s.In * s.Out);
        double attention = 6.0 * c.HiddenSize * c.NumHiddenLayers * data.Sum(e => (e.Ids.Length - 1.0) * e.Ids.Length);
        double lora = 6.0 * Rank * c.LinearShapes().Where(s => s.Path != "lm_head").Sum(s => (double)(s.In + s.Out)) * tokens;
        return 4 * matmul * tokens + attention + lora;
    }

    static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToList();
        return sorted[sorted.Count / 2];
    }

    static List<TokenizedExample> Uniform(int count, int length, int vocab, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => Example(random, length, vocab)).ToList();
    }

    static List<TokenizedExample> Mixed(int count, int maxLength, int vocab, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ => Example(random, random.Next(16, maxLength + 1), vocab)).ToList();
    }

    static TokenizedExample Example(Random random, int length, int vocab) =>
        new(Enumerable.Range(0, length).Select(_ => random.Next(vocab)).ToArray(), Enumerable.Repeat(true, length).ToArray());

    void Profile(LlamaForCausalLM model, LlamaConfig config, List<TokenizedExample> data, int rows, Action<string> line)
    {
        line("Where a step's time goes (phases of one step with the trainer's code path, medians of interleaved repeats):");
        using var scope = NewDisposeScope();
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = Rank, Alpha = 2 * Rank, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }, 5);
        adapter.Attach(model);
        long t = data[0].Ids.Length - 1;
        var ids = tensor(data.SelectMany(e => e.Ids.Take((int)t).Select(i => (long)i)).ToArray(), [rows, t]);
        var targets = tensor(data.SelectMany(e => e.Ids.Skip(1).Select(i => (long)i)).ToArray(), [rows, t]);
        var positions = arange(t, ScalarType.Int64).unsqueeze(0);
        var mask = ones(t, t, ScalarType.Bool).tril();
        var phases = new Dictionary<string, List<double>>();
        void Time(string name, Action action)
        {
            var clock = Stopwatch.StartNew();
            action();
            (phases.TryGetValue(name, out var list) ? list : phases[name] = []).Add(clock.Elapsed.TotalSeconds);
        }
        var threads = get_num_threads();
        for (int r = 0; r < steps + 1; r++)
        {
            using var step = NewDisposeScope();
            Tensor logits = null!, loss = null!;
            Time("forward to logits", () => logits = model.Forward(ids, positions, mask, null));
            Time("loss (cross-entropy)", () => loss = nn.functional.cross_entropy(logits.flatten(0, 1), targets.view(-1)));
            Time("backward", () => loss.backward());
            Time("2048² GEMM", () => randn(2048, 2048).matmul(randn(2048, 2048)));
            using (no_grad()) Time("forward, no autograd", () => model.Forward(ids, positions, mask, null));
            set_num_threads(1);
            using (no_grad()) Time("forward, no autograd, 1 thread", () => model.Forward(ids, positions, mask, null));
            set_num_threads(threads);
            foreach (var p in adapter.Parameters()) p.grad?.zero_();
        }
        TrainableAdapter.Detach(model);
        long b = rows, h = config.NumAttentionHeads, hd = config.HeadDim, d = config.HiddenSize;
        var q = randn(b, h, t, hd, requires_grad: true);
        var k = randn(b, h, t, hd, requires_grad: true);
        var v = randn(b, h, t, hd, requires_grad: true);
        var x = randn(b, t, d, requires_grad: true);
        var w = randn(config.IntermediateSize, d);
        var maskF = zeros(t, t).masked_fill(mask.logical_not(), double.NegativeInfinity);
        for (int r = 0; r < steps + 1; r++)
        {
            using var step = NewDisposeScope();
            Time("sdpa bool mask fwd+bwd", () => nn.functional.scaled_dot_product_attention(q, k, v, mask).sum().backward());
            Time("sdpa float mask fwd+bwd", () => nn.functional.scaled_dot_product_attention(q, k, v, maskF).sum().backward());
            Time("sdpa is_causal fwd+bwd", () => nn.functional.scaled_dot_product_attention(q, k, v, is_casual: true).sum().backward());
            Time("sdpa bool mask fwd", () => { using var _ = no_grad(); nn.functional.scaled_dot_product_attention(q, k, v, mask); });
            Time("linear d->ffn fwd+bwd", () => nn.functional.linear(x, w).sum().backward());
            Time("rmsnorm-ish fwd+bwd", () => (x * rsqrt(x.pow(2).mean([-1], keepdim: true) + 1e-5)).sum().backward());
        }
        foreach (var (name, times) in phases) line($"- {name}: {Median(times.Skip(1)) * 1000:F0} ms");
    }
}
