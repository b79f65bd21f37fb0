using System.Diagnostics;
using AdapterService.Core.Adapters;
using AdapterService.Core.Builtins;
using AdapterService.Core.Models;
using AdapterService.Core.Training;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Single-job training speed: LoRA (rank 16 on every attention and MLP projection) on a frozen Llama-shaped model with
/// random weights, 2,048 tokens per step, run through <see cref="LanguageModelTrainer"/> as a job runs it. Reports
/// tokens/s and model FLOP utilisation against a 2048² fp32 GEMM timed between the steps (best of three warm runs, so both
/// see the same load),
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
    static readonly List<string> Targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];
    readonly int steps = quick ? 3 : 4;

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
        using var model = RandomModel.Create(config, 1);
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
        using (var bf16 = BasePrecision.BFloat16.Apply(RandomModel.Create(config, 1)))
            Report("bf16 base (`Models:Precision=bf16`)", Time(bf16, config, data, rows, new TrainingSpeedOptions()), line);
        Report("gradient checkpointing", Time(model, config, data, rows, new TrainingSpeedOptions { GradientCheckpointing = true }), line);
        Report("accumulation 4 × 512 tokens", Time(model, config, data, rows, new TrainingSpeedOptions { MicroBatchSize = rows / 4 }), line);
        // Mixed lengths (16-256 tokens): packing trains the same tokens without computing padding.
        var mixed = Mixed(2 * rows, length + 1, config.VocabSize, seed: 4);
        Report("mixed lengths, padded rows", Time(model, config, mixed, 2 * rows, new TrainingSpeedOptions { Packing = false }), line);
        Report("mixed lengths, packed rows", Time(model, config, mixed, 2 * rows, new TrainingSpeedOptions { Packing = true }), line);
        line("");
        Profile(model, config, data, rows, line);
    }

    /// <summary>
    /// The fp32 row alone, <paramref name="runs"/> times (a fresh adapter and trainer each), with what could explain a
    /// different MFU on another machine of the same kind: every step's time (not only the median), the GEMM reference
    /// timed two ways (one cold 2048² GEMM right after each step, as the table does, and the best of three warm ones),
    /// and the minor page faults per step (fresh memory the allocator maps and the kernel zeroes).
    /// </summary>
    public void Repeat(int runs, Action<string> line)
    {
        var config = Config(quick);
        using var model = RandomModel.Create(config, 1);
        var data = Uniform(8, 257, config.VocabSize, seed: 3);
        line($"## fp32 MFU, {runs} runs of {steps} steps after a warm-up (8 × 256 tokens, LoRA r={Rank} on 7 projections), torch threads {get_num_threads()}");
        line("");
        line("| run | tokens/s | steps (s) | MFU vs cold GEMM | cold GEMM GFLOP/s | MFU vs warm best-of-3 | warm GEMM GFLOP/s | minor faults per step |");
        line("|---|---|---|---|---|---|---|---|");
        var mfus = new List<double>();
        var warmMfus = new List<double>();
        for (int r = 0; r < runs; r++)
        {
            var t = Time(model, config, data, 8, new TrainingSpeedOptions());
            mfus.Add(t.Gflops / t.ColdPeak);
            warmMfus.Add(t.Gflops / t.Peak);
            line($"| {r + 1} | {t.TokensPerSecond:F0} | {string.Join(" ", t.Steps.Select(s => s.ToString("F2")))} | {t.Gflops / t.ColdPeak:P0} | {t.ColdPeak:F0} | {t.Gflops / t.Peak:P0} | {t.Peak:F0} | {t.FaultsPerStep:F0} |");
        }
        line("");
        line($"MFU vs cold GEMM: median {Median(mfus):P0}, range {mfus.Min():P0}-{mfus.Max():P0}; vs warm best-of-3: median {Median(warmMfus):P0}, range {warmMfus.Min():P0}-{warmMfus.Max():P0}");
    }

    static long MinorFaults() => long.Parse(File.ReadAllText("/proc/self/stat").Split(')')[1].Split(' ', StringSplitOptions.RemoveEmptyEntries)[7]);

    sealed record Timing(double TokensPerSecond, double Gflops, double Peak, double Loss)
    {
        public double ColdPeak { get; init; }
        public double FaultsPerStep { get; init; }
        public List<double> Steps { get; init; } = [];
    }

    static void Report(string run, Timing t, Action<string> line) =>
        line($"| {run} | {t.TokensPerSecond:F0} | {t.Gflops:F1} | **{t.Gflops / t.Peak:P0}** | {t.Peak:F1} | {t.Loss:F4} |");

    /// <summary>
    /// Trains <see cref="steps"/> steps (after one warm-up step), each followed by the GEMM reference: one cold 2048² fp32
    /// GEMM (its caches just flushed by the step), then the best of three warm ones, which is the peak MFU is taken against
    /// (the cold one alone read 160-173 GFLOP/s on a quiet machine, moving MFU by ±5 points). Medians over the steps.
    /// </summary>
    Timing Time(LlamaForCausalLM model, LlamaConfig config, List<TokenizedExample> data, int batch, TrainingSpeedOptions options)
    {
        using var scope = NewDisposeScope();
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = Rank, Alpha = 2 * Rank, TargetModules = Targets }, 5);
        var hp = new Hyperparameters(steps + 1, batch, 1e-3);
        using var trainer = new LanguageModelTrainer(model, adapter, data, hp, padId: 0, seed: 1, options);
        var stepTimes = new List<double>();
        var gemm = new List<double>();
        var warm = new List<double>();
        var faults = new List<long>();
        var a = randn(2048, 2048);
        var b = randn(2048, 2048);
        long faultsBefore = MinorFaults();
        var clock = Stopwatch.StartNew();
        long tokensBefore = 0;
        var tokens = new List<long>();
        // One epoch is one step (every example in one batch); the first is the warm-up.
        trainer.Run(p =>
        {
            stepTimes.Add(clock.Elapsed.TotalSeconds);
            tokens.Add(trainer.TrainedTokens - tokensBefore);
            tokensBefore = trainer.TrainedTokens;
            faults.Add(MinorFaults() - faultsBefore);
            var g = Stopwatch.StartNew();
            a.matmul(b).Dispose();
            gemm.Add(g.Elapsed.TotalSeconds);
            double best = double.MaxValue;
            for (int i = 0; i < 3; i++)
            {
                g.Restart();
                a.matmul(b).Dispose();
                best = Math.Min(best, g.Elapsed.TotalSeconds);
            }
            warm.Add(best);
            faultsBefore = MinorFaults();
            clock.Restart();
        }, CancellationToken.None);
        double seconds = Median(stepTimes.Skip(1)), peak = 2.0 * 2048 * 2048 * 2048 / Median(warm.Skip(1)) / 1e9;
        long trainedTokens = data.Sum(e => e.Ids.Length - 1L);
        return new Timing(trainedTokens / seconds, Flops(config, data) / seconds / 1e9, peak, trainer.LastLoss)
        {
            ColdPeak = 2.0 * 2048 * 2048 * 2048 / Median(gemm.Skip(1)) / 1e9,
            FaultsPerStep = Median(faults.Skip(1).Select(f => (double)f)),
            Steps = stepTimes.Skip(1).ToList(),
        };
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

    /// <summary>
    /// Where a step's time goes: the phases of a step (as the trainer runs it), and inside the decoder layers their matmuls
    /// (frozen projections with LoRA) and attention core measured alone, the rest of a layer (norms, rotary, activation,
    /// residuals, reshapes) by difference. Each is forward + backward, timed round-robin with a 2048² GEMM.
    /// </summary>
    void Profile(LlamaForCausalLM model, LlamaConfig config, List<TokenizedExample> data, int rows, Action<string> line)
    {
        using var scope = NewDisposeScope();
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = Rank, Alpha = 2 * Rank, TargetModules = Targets }, 5);
        adapter.Attach(model);
        using var noDropout = new Generator(1);
        adapter.Train(true, noDropout);
        var batch = TokenRows.Collate(data, padId: 0, pack: false);
        long t = batch.Inputs.shape[1], d = config.HiddenSize, heads = config.NumAttentionHeads, hd = config.HeadDim;
        var layer = model.model.layers[0];
        var x = randn(rows, t, d).requires_grad_();
        var (cos, sin) = model.model.Angles(batch.Positions)[0];
        var q = randn(rows, heads, t, hd).requires_grad_();
        var k = randn(rows, heads, t, hd).requires_grad_();
        var v = randn(rows, heads, t, hd).requires_grad_();
        var (attention, mlp) = ((LlamaAttention)layer.self_attn, (LlamaMlp)layer.mlp);
        var projections = new[] { attention.q_proj, attention.k_proj, attention.v_proj, attention.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj };
        var inputs = projections.Select(p => randn(rows, t, p.InFeatures).requires_grad_()).ToArray();
        var hidden = randn(rows, t, d).requires_grad_();
        var a = randn(2048, 2048);
        var b = randn(2048, 2048);
        // The same number of rows as packed rows would give: one full-length example, then rows of two half-length ones.
        var halves = Enumerable.Range(0, 2 * (rows - 1)).Select(i => new TokenizedExample(data[i / 2].Ids[..(int)(t / 2 + 1)], data[i / 2].Train[..(int)(t / 2 + 1)])).Prepend(data[0]).ToList();
        var packed = TokenRows.Collate(halves, padId: 0, pack: true);
        var (packedCos, packedSin) = model.model.Angles(packed.Positions)[0];
        var packedFloat = zeros(packed.Mask.shape).masked_fill(packed.Mask.logical_not(), double.NegativeInfinity);

        var names = new[] { "forward (embeddings, decoder layers)", "head + loss forward", "backward", "optimizer (clip, AdamW)",
            "one decoder layer, fwd+bwd", "its 7 projections with LoRA, fwd+bwd", "its attention core (sdpa, causal mask), fwd+bwd",
            "head + cross-entropy, fwd+bwd", "head matmul alone, fwd+bwd", "2048² GEMM",
            "attention core with a packed (per-row) mask, fwd+bwd", "one decoder layer with packed rows' mask and positions, fwd+bwd",
            "attention core with a packed mask as float (0 / -inf), fwd+bwd" };
        var times = names.ToDictionary(n => n, _ => new List<double>());
        var parameters = adapter.Parameters().ToList();
        using var optimizer = optim.AdamW(parameters, 1e-4);
        void Time(string name, Action action)
        {
            using var inner = NewDisposeScope();
            var clock = Stopwatch.StartNew();
            action();
            times[name].Add(clock.Elapsed.TotalSeconds);
        }
        for (int r = 0; r < steps + 1; r++)
        {
            using (NewDisposeScope())
            {
                Tensor h = null!, loss = null!;
                var (input, blocks, head) = model.Chain(batch.Inputs, batch.Positions, batch.Mask);
                Time(names[0], () => h = blocks.Aggregate(input, (s, block) => block(s)).MoveToOuterDisposeScope());
                Time(names[1], () => loss = nn.functional.cross_entropy(head(h.flatten(0, 1).index_select(0, batch.TrainedPositions)), batch.TrainedTargets).MoveToOuterDisposeScope());
                Time(names[2], () => loss.backward());
                Time(names[3], () => { nn.utils.clip_grad_norm_(parameters, 1.0); optimizer.step(); optimizer.zero_grad(); });
            }
            Time(names[4], () => layer.Forward(x, cos, sin, batch.Mask, null).sum().backward());
            Time(names[5], () => { foreach (var (p, i) in projections.Zip(inputs)) p.forward(i).sum().backward(); });
            Time(names[6], () => nn.functional.scaled_dot_product_attention(q, k, v, batch.Mask).sum().backward());
            Time(names[7], () => nn.functional.cross_entropy(model.lm_head.forward(model.model.norm.forward(hidden)).flatten(0, 1), batch.TrainedTargets).backward());
            Time(names[8], () => model.lm_head.forward(hidden).sum().backward());
            Time(names[9], () => a.matmul(b));
            Time(names[10], () => nn.functional.scaled_dot_product_attention(q, k, v, packed.Mask).sum().backward());
            Time(names[11], () => layer.Forward(x, packedCos, packedSin, packed.Mask, null).sum().backward());
            Time(names[12], () => nn.functional.scaled_dot_product_attention(q, k, v, packedFloat).sum().backward());
            optimizer.zero_grad();
        }
        TrainableAdapter.Detach(model);
        var ms = times.ToDictionary(p => p.Key, p => Median(p.Value.Skip(1)) * 1000);
        double step = ms[names[0]] + ms[names[1]] + ms[names[2]] + ms[names[3]], layers = config.NumHiddenLayers;
        double peak = 2.0 * 2048 * 2048 * 2048 / ms[names[9]] / 1e6;
        double layerMatmul = 4 * rows * t * projections.Sum(p => (double)p.InFeatures * p.OutFeatures) + 6.0 * Rank * rows * t * projections.Sum(p => (double)(p.InFeatures + p.OutFeatures));
        line($"Where a step's time goes ({rows} × {t} tokens, medians of {steps} round-robin repeats; GEMM peak {peak:F0} GFLOP/s):");
        line("");
        line("| part | ms | share of the step | GFLOP/s |");
        line("|---|---|---|---|");
        line($"| **step** (forward + head/loss + backward + optimizer) | {step:F0} | 100 % | {Flops(config, data) / step / 1e6:F0} |");
        foreach (var n in names[..4]) line($"| {n} | {ms[n]:F0} | {ms[n] / step:P0} | |");
        line($"| decoder layers ×{layers}, fwd+bwd | {ms[names[4]] * layers:F0} | {ms[names[4]] * layers / step:P0} | |");
        line($"| — projections with LoRA ×{layers} | {ms[names[5]] * layers:F0} | {ms[names[5]] * layers / step:P0} | {layerMatmul / ms[names[5]] / 1e6:F0} |");
        line($"| — attention core ×{layers} | {ms[names[6]] * layers:F0} | {ms[names[6]] * layers / step:P0} | |");
        double rest = ms[names[4]] - ms[names[5]] - ms[names[6]];
        line($"| — the rest (norms, rotary, SiLU·up, residuals, reshapes) ×{layers} | {rest * layers:F0} | {rest * layers / step:P0} | |");
        line($"| — attention core with packed rows' mask [rows, 1, t, t] ×{layers} | {ms[names[10]] * layers:F0} | {ms[names[10]] * layers / step:P0} | |");
        line($"| — attention core with the packed mask as float ×{layers} | {ms[names[12]] * layers:F0} | {ms[names[12]] * layers / step:P0} | |");
        line($"| decoder layers ×{layers} with packed rows' mask and positions | {ms[names[11]] * layers:F0} | {ms[names[11]] * layers / step:P0} | |");
        line($"| head + cross-entropy, fwd+bwd | {ms[names[7]]:F0} | {ms[names[7]] / step:P0} | |");
        line($"| — head matmul alone | {ms[names[8]]:F0} | {ms[names[8]] / step:P0} | {4.0 * rows * t * d * config.VocabSize / ms[names[8]] / 1e6:F0} |");
    }
}
