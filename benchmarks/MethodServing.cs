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

        line("");
        line("| measurement | tokens/s | ratio |");
        line("|---|---|---|");
        MergedVersusBase(line, "Llama-shaped", model.Config, ["all-linear"]);
        var c0 = model.Config;
        MergedVersusBase(line, "GPT-2-shaped", new Gpt2Config { VocabSize = c0.VocabSize, NEmbd = c0.HiddenSize, NHead = c0.NumAttentionHeads, NLayer = c0.NumHiddenLayers, NPositions = c0.MaxPositionEmbeddings },
            ["c_attn", "c_proj", "c_fc"]);

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
        line($"| decode step, {Rows} rows, {Rows} LoRA adapters (r = 8, {lora[0].ParameterCount:N0} parameters each) | {Rows / loraDecode:F0} | |");
        line($"| decode step, {Rows} rows, {Rows} Lily adapters (d = {d}, 4 experts, {lily[0].ParameterCount:N0} parameters each) | {Rows / lilyDecode:F0} | **{loraDecode / lilyDecode:F3}** of LoRA (target ≥ 0.85) |");
        foreach (var s in lora.Concat(lily)) s.Dispose();
        foreach (var t in states.Values) t.Dispose();
    }

    /// <summary>
    /// A decode step of the base, of a second identical copy of it (the control: two copies in memory never time exactly
    /// alike), and of a copy with RLRR merged in, timed round-robin. Llama's layers and norms have no biases, so RLRR's
    /// shifts stay a vector add each; GPT-2's have biases and take them.
    /// </summary>
    void MergedVersusBase(Action<string> line, string name, ModelConfig config, string[] targets)
    {
        using var first = (CausalLanguageModel)RandomModel.Create(config, seed: 1);
        using var copy = (CausalLanguageModel)RandomModel.Create(config, seed: 1);
        using var merged = (CausalLanguageModel)RandomModel.Create(config, seed: 1);
        using (var rlrr = (RlrrAdapter)TrainableAdapter.Create(merged, new RlrrConfig { TargetModules = targets }, seed: 1))
        {
            Randomize(rlrr, 2);
            rlrr.Merge(merged);
        }
        var caches = new[] { first, copy, merged }.Select(m => new SlotKvCache(m, Rows, m.ContextLength)).ToArray();
        try
        {
            var models = new[] { first, copy, merged };
            for (int m = 0; m < 3; m++)
                for (int slot = 0; slot < Rows; slot++) PrefillInto(models[m], caches[m], slot);
            var t = Measure.Interleaved([.. Enumerable.Range(0, 3).Select(m => (Action)(() => Decode(models[m], caches[m])))], repeats);
            line($"| decode step, {Rows} rows, {name} base | {Rows / t[0]:F0} | 1 |");
            line($"| decode step, {Rows} rows, {name} base, a second identical copy (control) | {Rows / t[1]:F0} | {t[0] / t[1]:F3} of base |");
            line($"| decode step, {Rows} rows, {name}, RLRR (every linear layer and norm) merged | {Rows / t[2]:F0} | **{t[0] / t[2]:F3}** of base, {t[1] / t[2]:F3} of the control copy (target ≥ 0.97) |");
        }
        finally
        {
            foreach (var cache in caches) cache.Dispose();
        }
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

    static void PrefillInto(CausalLanguageModel model, SlotKvCache cache, int slot)
    {
        using var scope = NewDisposeScope();
        cache.BeginChunks([(slot, 0, Prompt)]);
        model.Forward(randint(0, 256, [1, Prompt], ScalarType.Int64), arange(Prompt, ScalarType.Int64).unsqueeze(0),
            ones(Prompt, Prompt, ScalarType.Bool).tril(), cache);
    }

    void Decode() => Decode(model, cache);

    /// <summary>One decode step for all rows, with whatever adapters are in the model's slots.</summary>
    static void Decode(CausalLanguageModel model, SlotKvCache cache)
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
