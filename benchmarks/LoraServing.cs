using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Benchmarks 1 and 2 at the level of one forward pass: 32 rows, each with its own LoRA adapter (rank 8-16 on q,v),
/// against the same rows on the base alone, against switching adapters per row (PEFT's mixed batch), and against
/// merging each row's adapter into the weights before its step. Variants are timed round-robin.
/// </summary>
sealed class LoraServing : IDisposable
{
    const int Rows = 32, Prompt = 64, Prefills = 8;
    readonly LlamaForCausalLM model;
    readonly List<LoraAdapter> adapters;
    readonly List<Dictionary<string, LoraWeights>> weights;
    readonly SlotKvCache cache;
    readonly int repeats;

    public LoraServing(bool quick)
    {
        model = Measure.RandomModel(Measure.Config(quick));
        adapters = Enumerable.Range(0, Rows).Select(i => Measure.RandomAdapter(model, 8 + i % 9, i)).ToList();
        weights = adapters.Select(a => a.LoraLayers.ToDictionary(l => l.Key, l => l.Value.Weights())).ToList();
        cache = new SlotKvCache(model, Rows, model.ContextLength);
        repeats = quick ? 3 : 7;
    }

    public void Run(Action<string> line, double peak)
    {
        using var noGrad = no_grad();
        long parameters = Measure.Parameters(model);
        line($"## 1-2. {Rows} requests over {Rows} distinct LoRA adapters (rank 8-16 on q_proj, v_proj)");
        line($"model: Llama-shaped, {parameters / 1e6:F1}M parameters (hidden {model.Config.HiddenSize}, {model.Config.NumHiddenLayers} layers), random weights; prompt {Prompt} tokens");

        // Round-robin, so that drift on this shared machine moves every variant alike.
        var prefill = Measure.Interleaved([
            () => { for (int i = 0; i < Prefills; i++) Prefill(null); },
            () => { for (int i = 0; i < Prefills; i++) Prefill(weights[i]); },
        ], repeats);
        double basePrefill = prefill[0], loraPrefill = prefill[1];

        for (int slot = 0; slot < Rows; slot++) PrefillInto(slot);
        using var kept = Gather(Enumerable.Range(0, Rows).Select(i => weights[i]).ToList());
        Clear();
        var decode = Measure.Interleaved([
            () => Decode(), () => Decode(kept), () => { using var g = Gather(weights); Decode(g); }, SwitchPerAdapter, MergePerRequest,
        ], repeats);
        double baseDecode = decode[0], loraDecode = decode[1], regatherDecode = decode[2], switchDecode = decode[3], mergeDecode = decode[4];

        double Tps(double seconds, int tokens) => tokens / seconds;
        line("");
        line("| measurement | tokens/s | ratio |");
        line("|---|---|---|");
        line($"| prefill, base alone | {Tps(basePrefill, Prefills * Prompt):F0} | 1 |");
        line($"| prefill, each request with its adapter | {Tps(loraPrefill, Prefills * Prompt):F0} | **{basePrefill / loraPrefill:F3}** of base (target ≥ 0.85) |");
        line($"| decode step, {Rows} rows, base alone | {Tps(baseDecode, Rows):F0} | 1 |");
        line($"| decode step, {Rows} rows, {Rows} adapters gathered once (steady batch) | {Tps(loraDecode, Rows):F0} | **{baseDecode / loraDecode:F3}** of base (target ≥ 0.9) |");
        line($"| decode step, {Rows} adapters re-gathered every step | {Tps(regatherDecode, Rows):F0} | {baseDecode / regatherDecode:F3} of base |");
        line($"| decode step, switch per adapter (each row alone with its adapter, as PEFT's mixed batch) | {Tps(switchDecode, Rows):F0} | batched is **{switchDecode / loraDecode:F1}×** faster (target ≥ 10) |");
        line($"| decode step, merge per request (W + sBA, run, unmerge) | {Tps(mergeDecode, Rows):F0} | batched is **{mergeDecode / loraDecode:F1}×** faster |");
        double flops = 2.0 * (parameters - model.Config.VocabSize * (long)model.Config.HiddenSize) * Rows;   // the embedding lookup is no matmul
        line($"| decode step, base: fraction of the fp32 matmul peak | {flops / baseDecode / 1e9:F0} GFLOP/s | {flops / baseDecode / 1e9 / peak:P0} of peak |");
    }

    void Prefill(Dictionary<string, LoraWeights>? adapter)
    {
        using var scope = NewDisposeScope();
        using var rowLora = adapter is null ? null : Gather([adapter]);
        cache.BeginPrefill(0, Prompt);
        var ids = randint(0, 256, [1, Prompt], ScalarType.Int64);
        model.Forward(ids, arange(Prompt, ScalarType.Int64).unsqueeze(0), ones(Prompt, Prompt, ScalarType.Bool).tril(), cache);
        Clear();
    }

    void PrefillInto(int slot)
    {
        using var scope = NewDisposeScope();
        cache.BeginPrefill(slot, Prompt);
        model.Forward(randint(0, 256, [1, Prompt], ScalarType.Int64), arange(Prompt, ScalarType.Int64).unsqueeze(0),
            ones(Prompt, Prompt, ScalarType.Bool).tril(), cache);
    }

    /// <summary>One decode step for all rows (position <see cref="Prompt"/>), with the given per-row LoRA in place.</summary>
    void Decode(Gathered? lora = null)
    {
        using var scope = NewDisposeScope();
        lora?.Attach(model);
        var lengths = full(Rows, (long)Prompt, ScalarType.Int64);
        cache.BeginDecode(lengths);
        var mask = ones(Rows, 1, 1, Prompt + 1, ScalarType.Bool);
        model.Forward(randint(0, 256, [Rows, 1], ScalarType.Int64), lengths.unsqueeze(1), mask, cache);
        Clear();
    }

    void SwitchPerAdapter()
    {
        using var single = new SlotKvCache(model, 1, Prompt + 1);
        for (int i = 0; i < Rows; i++)
        {
            using var scope = NewDisposeScope();
            adapters[i].Attach(model);
            single.BeginDecode(full(1, (long)Prompt, ScalarType.Int64));
            model.Forward(randint(0, 256, [1, 1], ScalarType.Int64), full(1, 1, (long)Prompt, ScalarType.Int64), null, single);
            Clear();
        }
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

    /// <summary>Per-row LoRA for every adapted layer, as the engine builds it.</summary>
    sealed class Gathered(Dictionary<string, RowLora> layers) : IDisposable
    {
        public void Attach(LlamaForCausalLM model)
        {
            foreach (var (path, layer) in model.LinearLayers()) layer.Adapter = layers.GetValueOrDefault(path);
        }

        public void Dispose() { foreach (var l in layers.Values) l.Dispose(); }
    }

    Gathered Gather(IReadOnlyList<Dictionary<string, LoraWeights>> rows)
    {
        var gathered = new Dictionary<string, RowLora>();
        foreach (var (path, layer) in model.LinearLayers())
            if (rows.Any(r => r.ContainsKey(path)))
            {
                var rowLora = new RowLora(rows.Select(r => r.GetValueOrDefault(path)).ToList(), layer.InFeatures, layer.OutFeatures);
                rowLora.DetachFromScope();
                gathered[path] = rowLora;
            }
        var result = new Gathered(gathered);
        result.Attach(model);
        return result;
    }

    void Clear() { foreach (var (_, layer) in model.LinearLayers()) layer.Adapter = null; }

    public void Dispose()
    {
        cache.Dispose();
        foreach (var a in adapters) a.Dispose();
        model.Dispose();
    }
}
