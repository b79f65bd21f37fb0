using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Benchmarks 1 and 2 at the level of one forward pass: 32 rows, each with its own LoRA adapter (rank 8-16 on q,v),
/// against the same rows on the base alone, against PEFT's mixed batch (the base once for the batch, the LoRA part per
/// adapter group), against each row run alone with its adapter, and against merging each row's adapter into the
/// weights before its step. Every variant, prefill and decode, is timed round-robin in one run.
/// </summary>
sealed class LoraServing : IDisposable
{
    const int Rows = 32, Prompt = 64, PrefillRows = 8;
    readonly LlamaForCausalLM model;
    readonly BatchSteps steps;
    readonly List<LoraAdapter> adapters;
    readonly List<IReadOnlyDictionary<string, LoraWeights>> weights;
    readonly int repeats;

    public LoraServing(bool quick)
    {
        model = Measure.RandomModel(Measure.Config(quick));
        steps = new BatchSteps(model, Rows, Prompt);
        adapters = Enumerable.Range(0, Rows).Select(i => Measure.RandomAdapter(model, 8 + i % 9, i)).ToList();
        weights = adapters.Select(a => (IReadOnlyDictionary<string, LoraWeights>)a.LoraLayers.ToDictionary(l => l.Key, l => l.Value.Weights())).ToList();
        repeats = quick ? 3 : 7;
    }

    public void Run(Action<string> line, double peak)
    {
        using var noGrad = no_grad();
        long parameters = Measure.Parameters(model);
        line($"## 1-2. {Rows} requests over {Rows} distinct LoRA adapters (rank 8-16 on q_proj, v_proj)");
        line($"model: Llama-shaped, {parameters / 1e6:F1}M parameters (hidden {model.Config.HiddenSize}, {model.Config.NumHiddenLayers} layers), fp32, random weights; " +
             $"prefill: {PrefillRows} prompts of {Prompt} tokens in one pass; decode: one step of {Rows} rows after {Prompt} tokens");

        using var kept = steps.Gather(weights);
        var names = Enumerable.Range(0, Rows).Select(i => (string?)$"a{i}").ToList();
        var peft = PeftMixedBatch.For(names, names.Select((n, i) => (n!, weights[i])).ToDictionary(p => p.Item1, p => p.Item2));
        // PEFT's way must compute what the engine computes, or the comparison means nothing.
        using (NewDisposeScope())
        {
            var ids = randint(0, model.Config.VocabSize, [Rows, 1], ScalarType.Int64);
            Tensor engine = null!, mixed = null!;
            steps.With(kept.Layers, () => engine = steps.Logits(ids));
            steps.With(peft, () => mixed = steps.Logits(ids));
            double gap = (engine - mixed).abs().max().item<float>(), size = engine.abs().max().item<float>();
            if (gap > 1e-4 * Math.Max(1, size)) throw new InvalidOperationException($"PEFT's mixed batch differs from the engine's batch by {gap} (logits up to {size})");
            line($"check: PEFT's mixed batch and the engine's gathered batch give the same logits (max |difference| {gap:G2}, logits up to {size:F1})");
        }
        var variants = new (string Name, Action Run)[]
        {
            ("prefill, base alone", () => steps.With(null, () => steps.Prefill(0, PrefillRows))),
            ("prefill, each prompt with its adapter (gathered for the group)", () =>
            {
                using var g = steps.Gather(weights.Take(PrefillRows).ToList());
                steps.With(g.Layers, () => steps.Prefill(0, PrefillRows));
            }),
            ($"decode, {Rows} rows, base alone", () => steps.With(null, steps.Decode)),
            ($"decode, {Rows} rows, {Rows} adapters gathered once (steady batch, the engine)", () => steps.With(kept.Layers, steps.Decode)),
            ($"decode, {Rows} adapters re-gathered every step", () => { using var g = steps.Gather(weights); steps.With(g.Layers, steps.Decode); }),
            ("decode, PEFT's mixed batch (base once for the batch, LoRA per adapter group)", () => steps.With(peft, steps.Decode)),
            ($"decode, each row alone with its adapter attached ({Rows} batch-1 forward passes)", RowAlone),
            ("decode, merge per request (W + sBA, run, unmerge)", MergePerRequest),
        };
        var t = Measure.RoundRobin(variants.Select(v => v.Run).ToArray(), repeats);
        // Indexes into t: 0-1 prefill, 2 base, 3 engine, 4 re-gathered, 5 PEFT, 6 row alone, 7 merge.
        double Tps(int i) => (i < 2 ? PrefillRows * Prompt : Rows) / t[i].Median;
        string Of(int i, int of) => Measure.Ratio(t[of], t[i]).Format("F3");       // tokens/s of i ÷ tokens/s of `of`
        string Faster(int i, int than) => Measure.Ratio(t[than], t[i]).Format("F1");

        line("");
        line($"Median of {repeats} round-robin rounds; ratios are taken within each round: median (lowest–highest).");
        line("");
        line("| measurement | tokens/s | ratio |");
        line("|---|---|---|");
        line($"| {variants[0].Name} | {Tps(0):F0} | 1 |");
        line($"| {variants[1].Name} | {Tps(1):F0} | **{Of(1, 0)}** of base (target ≥ 0.85) |");
        line($"| {variants[2].Name} | {Tps(2):F0} | 1 |");
        line($"| {variants[3].Name} | {Tps(3):F0} | **{Of(3, 2)}** of base (target ≥ 0.9) |");
        line($"| {variants[4].Name} | {Tps(4):F0} | {Of(4, 2)} of base |");
        line($"| {variants[5].Name} | {Tps(5):F0} | {Of(5, 2)} of base; the engine is **{Faster(3, 5)}×** faster (target ≥ 2) |");
        line($"| {variants[6].Name} | {Tps(6):F0} | the engine is **{Faster(3, 6)}×** faster |");
        line($"| {variants[7].Name} | {Tps(7):F0} | the engine is **{Faster(3, 7)}×** faster |");
        double flops = 2.0 * (parameters - model.Config.VocabSize * (long)model.Config.HiddenSize) * Rows;   // the embedding lookup is no matmul
        line($"| decode step, base: fraction of the fp32 matmul peak | {flops / t[2].Median / 1e9:F0} GFLOP/s | {flops / t[2].Median / 1e9 / peak:P0} of peak |");
    }

    /// <summary>Each row's step alone, batch 1, with its adapter attached as in training (LoraLayer on the layers).</summary>
    void RowAlone()
    {
        using var single = new SlotKvCache(model, 1, Prompt + 1);
        for (int i = 0; i < Rows; i++)
        {
            using var scope = NewDisposeScope();
            adapters[i].Attach(model);
            single.BeginDecode(full(1, (long)Prompt, ScalarType.Int64));
            model.Forward(randint(0, 256, [1, 1], ScalarType.Int64), full(1, 1, (long)Prompt, ScalarType.Int64), null, single);
        }
        TrainableAdapter.Detach(model);
    }

    void MergePerRequest()
    {
        using var single = new SlotKvCache(model, 1, Prompt + 1);
        var layers = model.LinearLayers().ToDictionary(l => l.Path, l => l.Layer);
        for (int i = 0; i < Rows; i++)
        {
            using var scope = NewDisposeScope();
            var deltas = weights[i].ToDictionary(w => w.Key, w => w.Value.B.matmul(w.Value.A) * w.Value.Scaling);
            foreach (var (path, delta) in deltas) layers[path].weight.add_(delta);
            single.BeginDecode(full(1, (long)Prompt, ScalarType.Int64));
            model.Forward(randint(0, 256, [1, 1], ScalarType.Int64), full(1, 1, (long)Prompt, ScalarType.Int64), null, single);
            foreach (var (path, delta) in deltas) layers[path].weight.sub_(delta);
        }
    }

    public void Dispose()
    {
        steps.Dispose();
        foreach (var a in adapters) a.Dispose();
        model.Dispose();
    }
}
