using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Benchmark 4: an RLRR adapter merged into the weights against the base alone (merging must cost nothing), and a
/// decode step of 32 rows with 32 distinct Lily adapters against 32 distinct LoRA adapters of the same parameter
/// count, both served the way the engine serves them (<see cref="RowAdapter"/>).
/// </summary>
sealed class MethodServing : IDisposable
{
    const int Rows = 32, Prompt = 64;
    readonly LlamaForCausalLM model;
    readonly SlotKvCache cache;
    readonly string folder = Directory.CreateTempSubdirectory("method-serving-").FullName;
    readonly int repeats;

    public MethodServing(bool quick)
    {
        model = Measure.RandomModel(Measure.Config(quick));
        cache = new SlotKvCache(model, Rows, model.ContextLength);
        repeats = quick ? 5 : 15;
    }

    public void Run(Action<string> line)
    {
        using var noGrad = no_grad();
        line($"## 4. Other methods: RLRR merged vs base; Lily vs LoRA at equal parameter count ({Rows} rows, {Rows} adapters)");
        for (int slot = 0; slot < Rows; slot++) PrefillInto(slot);

        // The merged model is a second copy of the base with RLRR folded in, timed round-robin with the base.
        using var merged = Measure.RandomModel(model.Config);
        double baseDecode, basePrefill, mergedDecode, mergedPrefill;
        using (var rlrr = (RlrrAdapter)TrainableAdapter.Create(merged, new RlrrConfig { TargetModules = ["all-linear"] }, seed: 1))
        {
            Randomize(rlrr, 2);
            rlrr.Merge(merged);
            using var mergedCache = new SlotKvCache(merged, Rows, merged.ContextLength);
            for (int slot = 0; slot < Rows; slot++) PrefillInto(merged, mergedCache, slot);
            var times = Measure.Interleaved([Decode, () => Decode(merged, mergedCache), () => PrefillInto(0), () => PrefillInto(merged, mergedCache, 0)], repeats);
            (baseDecode, mergedDecode, basePrefill, mergedPrefill) = (times[0], times[1], times[2], times[3]);
            line("");
            line("| measurement | tokens/s | ratio |");
            line("|---|---|---|");
            line($"| decode step, {Rows} rows, base alone | {Rows / baseDecode:F0} | 1 |");
            line($"| decode step, {Rows} rows, RLRR (all linear layers) merged | {Rows / mergedDecode:F0} | **{baseDecode / mergedDecode:F3}** of base (target ≥ 0.97) |");
            line($"| prefill {Prompt} tokens, base alone | {Prompt / basePrefill:F0} | 1 |");
            line($"| prefill {Prompt} tokens, RLRR merged | {Prompt / mergedPrefill:F0} | {basePrefill / mergedPrefill:F3} of base |");
        }

        // Equal parameter count on q_proj, v_proj: LoRA r = 8 has L·r·(2·in + out_q + out_v); Lily with 4 experts has
        // L·d·2·in + 4·d·(out_q + out_v + 2), so d is the nearest integer to their ratio (12 at hidden 768).
        var c = model.Config;
        long inF = c.HiddenSize, outQ = c.NumAttentionHeads * c.HeadDim, outV = c.KeyValueHeads * c.HeadDim, layers = c.NumHiddenLayers;
        int d = (int)Math.Round(8.0 * layers * (2 * inF + outQ + outV) / (layers * 2 * inF + 4 * (outQ + outV + 2)));
        var lora = Serve(Enumerable.Range(0, Rows).Select(i => (AdapterConfig)new LoraConfig { Rank = 8, Alpha = 16, TargetModules = ["q_proj", "v_proj"] }).ToList(), "lora");
        var lily = Serve(Enumerable.Range(0, Rows).Select(i => (AdapterConfig)new LilyConfig { Rank = d, NumExperts = 4, TargetModules = ["q_proj", "v_proj"] }).ToList(), "lily");
        var states = new Dictionary<(string, int), Tensor>();
        Tensor State(string path, int width) => states.TryGetValue((path, width), out var t) ? t : states[(path, width)] = zeros(Rows, width).DetachFromDisposeScope();
        // Two copies of the base, one serving the LoRA rows and one the Lily rows, timed round-robin.
        using var lilyModel = Measure.RandomModel(model.Config);
        using var lilyCache = new SlotKvCache(lilyModel, Rows, lilyModel.ContextLength);
        for (int slot = 0; slot < Rows; slot++) PrefillInto(lilyModel, lilyCache, slot);
        double loraDecode, lilyDecode;
        using (Attach(model, lora, null))
        using (Attach(lilyModel, lily, State))
        {
            var times = Measure.Interleaved([Decode, () => Decode(lilyModel, lilyCache)], repeats);
            (loraDecode, lilyDecode) = (times[0], times[1]);
        }
        line($"| decode step, {Rows} rows, {Rows} LoRA adapters (r = 8, {lora[0].ParameterCount:N0} parameters each) | {Rows / loraDecode:F0} | {baseDecode / loraDecode:F3} of base |");
        line($"| decode step, {Rows} rows, {Rows} Lily adapters (d = {d}, 4 experts, {lily[0].ParameterCount:N0} parameters each) | {Rows / lilyDecode:F0} | **{loraDecode / lilyDecode:F3}** of LoRA (target ≥ 0.85) |");
        foreach (var s in lora.Concat(lily)) s.Dispose();
        foreach (var t in states.Values) t.Dispose();
    }

    static void Randomize(TrainableAdapter adapter, long seed)
    {
        using var g = new Generator((ulong)seed);
        using var scope = NewDisposeScope();
        foreach (var p in adapter.Parameters()) p.normal_(0, 0.02, g);
    }

    /// <summary>Adapters made from the configs, random, saved and loaded back as the engine serves them.</summary>
    List<ServedAdapter> Serve(List<AdapterConfig> configs, string name) => configs.Select((config, i) =>
    {
        using var adapter = TrainableAdapter.Create(model, config, seed: i);
        Randomize(adapter, 100 + i);
        var path = Path.Combine(folder, $"{name}{i}");
        adapter.Save(path);
        return ServedAdapter.Load(path, model);
    }).ToList();

    void PrefillInto(int slot) => PrefillInto(model, cache, slot);

    static void PrefillInto(LlamaForCausalLM model, SlotKvCache cache, int slot)
    {
        using var scope = NewDisposeScope();
        cache.BeginPrefill(slot, Prompt);
        model.Forward(randint(0, 256, [1, Prompt], ScalarType.Int64), arange(Prompt, ScalarType.Int64).unsqueeze(0),
            ones(Prompt, Prompt, ScalarType.Bool).tril(), cache);
    }

    void Decode() => Decode(model, cache);

    /// <summary>One decode step for all rows, with whatever adapters are in the model's slots.</summary>
    static void Decode(LlamaForCausalLM model, SlotKvCache cache)
    {
        using var scope = NewDisposeScope();
        var lengths = full(Rows, (long)Prompt, ScalarType.Int64);
        cache.BeginDecode(lengths);
        model.Forward(randint(0, 256, [Rows, 1], ScalarType.Int64), lengths.unsqueeze(1), ones(Rows, 1, 1, Prompt + 1, ScalarType.Bool), cache);
    }

    /// <summary>Each row's adapter in every layer, gathered once as the engine does for a steady batch; disposing detaches them.</summary>
    static Attached Attach(LlamaForCausalLM model, List<ServedAdapter> rows, Func<string, int, Tensor>? states)
    {
        var slots = Enumerable.Range(0, Rows).Select(i => (long)i).ToList();
        var layers = model.LinearLayers().Select(l => (l.Layer, Row: new RowAdapter(l.Path, l.Layer, rows, slots, states))).ToList();
        foreach (var (layer, row) in layers)
        {
            row.DetachFromScope();
            layer.Adapter = row.IsEmpty ? null : row;
        }
        return new Attached(model, layers.Select(l => l.Row).ToList());
    }

    sealed class Attached(LlamaForCausalLM model, List<RowAdapter> rows) : IDisposable
    {
        public void Dispose()
        {
            TrainableAdapter.Detach(model);
            foreach (var row in rows) row.Dispose();
        }
    }

    public void Dispose()
    {
        cache.Dispose();
        model.Dispose();
        Directory.Delete(folder, recursive: true);
    }
}
