using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// The engine's two kinds of forward pass on one model, without the engine around them: a prefill of prompts into
/// slots of a <see cref="SlotKvCache"/> and a decode step of all rows, each row with its own LoRA (gathered the way the
/// engine gathers it, <see cref="RowLora"/>) or none. A decode step leaves the cache's lengths where they were, so it
/// can be repeated.
/// </summary>
sealed class BatchSteps : IDisposable
{
    public LlamaForCausalLM Model { get; }
    public SlotKvCache Cache { get; }
    public int Rows { get; }
    public int Prompt { get; }

    /// <summary>Every slot filled with a <paramref name="prompt"/>-token prompt, ready for decode steps.</summary>
    public BatchSteps(LlamaForCausalLM model, int rows, int prompt)
    {
        (Model, Rows, Prompt) = (model, rows, prompt);
        Cache = new SlotKvCache(model, rows, prompt + 1);
        using var noGrad = no_grad();
        for (int slot = 0; slot < rows; slot += 8) Prefill(slot, Math.Min(8, rows - slot));
    }

    /// <summary>Prompts of <see cref="Prompt"/> random tokens into slots [first, first + count), in one forward pass (as the engine prefills a group).</summary>
    public void Prefill(int first, int count)
    {
        using var scope = NewDisposeScope();
        Cache.BeginChunks(Enumerable.Range(first, count).Select(slot => ((long)slot, 0L, (long)Prompt)).ToArray());
        var ids = randint(0, Model.Config.VocabSize, [count, Prompt], ScalarType.Int64);
        Model.Forward(ids, arange(Prompt, ScalarType.Int64).unsqueeze(0).expand(count, Prompt),
            ones(Prompt, Prompt, ScalarType.Bool).tril().expand(count, 1, Prompt, Prompt), Cache);
    }

    /// <summary>One decode step for all rows (position <see cref="Prompt"/>) of random tokens with whatever adapters are attached.</summary>
    public void Decode()
    {
        using var scope = NewDisposeScope();
        Logits(randint(0, Model.Config.VocabSize, [Rows, 1], ScalarType.Int64));
    }

    /// <summary>A decode step's logits [rows, 1, vocab] for the tokens <paramref name="ids"/> [rows, 1] (in the caller's dispose scope).</summary>
    public Tensor Logits(Tensor ids)
    {
        var lengths = full(Rows, (long)Prompt, ScalarType.Int64);
        Cache.BeginDecode(lengths);
        return Model.Forward(ids, lengths.unsqueeze(1), ones(Rows, 1, 1, Prompt + 1, ScalarType.Bool), Cache);
    }

    /// <summary>Attaches <paramref name="adapters"/> (one per layer path, or none) to the model's linear layers for a step, and detaches them after.</summary>
    public void With(IReadOnlyDictionary<string, ILinearAdapter>? adapters, Action step)
    {
        foreach (var (path, layer) in Model.LinearLayers()) layer.Adapter = adapters?.GetValueOrDefault(path);
        try { step(); }
        finally { foreach (var (_, layer) in Model.LinearLayers()) layer.Adapter = null; }
    }

    /// <summary>The rows' LoRA weights gathered per layer into <see cref="RowLora"/>s (kept beyond any dispose scope), as the engine holds a steady batch.</summary>
    public Gathered Gather(IReadOnlyList<IReadOnlyDictionary<string, LoraWeights>> rows) => new(Model, rows);

    public sealed class Gathered : IDisposable
    {
        public Dictionary<string, ILinearAdapter> Layers { get; } = [];

        public Gathered(LlamaForCausalLM model, IReadOnlyList<IReadOnlyDictionary<string, LoraWeights>> rows)
        {
            using var noGrad = no_grad();
            foreach (var (path, layer) in model.LinearLayers())
                if (rows.Any(r => r.ContainsKey(path)))
                {
                    var rowLora = new RowLora(rows.Select(r => r.GetValueOrDefault(path)).ToList(), layer.InFeatures, layer.OutFeatures);
                    rowLora.DetachFromScope();
                    Layers[path] = rowLora;
                }
        }

        public void Dispose() { foreach (var l in Layers.Values) ((RowLora)l).Dispose(); }
    }

    public void Dispose() => Cache.Dispose();
}

/// <summary>
/// PEFT's mixed-batch LoRA, the way <c>peft/tuners/lora/layer.py</c>'s <c>Linear._mixed_batch_forward</c> runs it when a
/// batch carries <c>adapter_names</c>: the base layer once for the whole batch; then, at every call, the distinct adapters
/// of the batch are found and for each one its rows' inputs are gathered (<c>x[rows]</c>), put through
/// <c>lora_B(lora_A(x)) * scaling</c>, and added back to those rows of the output (<c>result[rows] += …</c>, a gather,
/// an add and a scatter). Rows without an adapter (<c>__base__</c>) are skipped.
/// </summary>
sealed class PeftMixedBatch(IReadOnlyList<string?> adapterOfRow, IReadOnlyDictionary<string, LoraWeights> weights) : ILinearAdapter
{
    public Tensor Forward(Tensor x, Tensor y)
    {
        foreach (var adapter in adapterOfRow.Distinct())
        {
            if (adapter is null || !weights.TryGetValue(adapter, out var w)) continue;
            // The row list is rebuilt at each call, as PEFT's list comprehension is, and indexes as a tensor.
            using var rows = tensor(Enumerable.Range(0, adapterOfRow.Count).Where(i => adapterOfRow[i] == adapter).Select(i => (long)i).ToArray());
            using var sub = x.index_select(0, rows);
            using var a = nn.functional.linear(sub, w.A);
            using var b = nn.functional.linear(a, w.B);
            using var lora = b * w.Scaling;
            using var updated = y.index_select(0, rows).add_(lora);
            y.index_copy_(0, rows, updated);
        }
        return y;
    }

    /// <summary>Each adapted layer's PEFT layer for a batch whose row i uses adapter <c>names[i]</c> (weights by name, then by layer path).</summary>
    public static Dictionary<string, ILinearAdapter> For(IReadOnlyList<string?> names, IReadOnlyDictionary<string, IReadOnlyDictionary<string, LoraWeights>> adapters) =>
        adapters.Values.SelectMany(a => a.Keys).Distinct().ToDictionary(path => path, path => (ILinearAdapter)new PeftMixedBatch(names,
            adapters.Where(a => a.Value.ContainsKey(path)).ToDictionary(a => a.Key, a => a.Value[path])));
}
