using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Serving in bf16 against fp32 (<c>Models:Precision</c>) on benchmark 1's 85M Llama-shaped model: the same random
/// weights kept in each type, a prefill of 8 prompts, a decode step of 32 rows (base alone, and with 32 distinct LoRA
/// adapters gathered as the engine gathers them; adapters stay fp32 either way) and of 1 row, and a 2048² GEMM in each
/// type, all round-robin in one run.
/// </summary>
sealed class PrecisionServing(bool quick)
{
    const int Rows = 32, Prompt = 64, PrefillRows = 8;

    public void Run(Action<string> line)
    {
        using var noGrad = no_grad();
        var config = Measure.Config(quick);
        using var fp32 = Measure.RandomModel(config);
        using var bf16 = BasePrecision.BFloat16.Apply(Measure.RandomModel(config));
        using var fp32Steps = new BatchSteps(fp32, Rows, Prompt);
        using var bf16Steps = new BatchSteps(bf16, Rows, Prompt);
        using var fp32One = new BatchSteps(fp32, 1, Prompt);
        using var bf16One = new BatchSteps(bf16, 1, Prompt);
        var adapters = Enumerable.Range(0, Rows).Select(i => Measure.RandomAdapter(fp32, 8 + i % 9, i)).ToList();
        using var gathered = fp32Steps.Gather(adapters.Select(a => (IReadOnlyDictionary<string, LoraWeights>)a.LoraLayers.ToDictionary(l => l.Key, l => l.Value.Weights())).ToList());
        int repeats = quick ? 3 : 7;

        line($"## bf16 against fp32 serving (benchmark 1's model: {Measure.Parameters(fp32) / 1e6:F1}M parameters, hidden {config.HiddenSize}, {config.NumHiddenLayers} layers)");
        line($"bf16: every linear layer's weight and the embeddings kept and multiplied in bf16 (`Models:Precision=bf16`); norms, attention, the {Rows} LoRA adapters (rank 8-16 on q_proj, v_proj) and logits fp32.");
        line($"Median of {repeats} round-robin rounds; ratios taken within each round: median (lowest–highest).");
        line("");
        using var a32 = randn(2048, 2048);
        using var a16 = a32.to_type(ScalarType.BFloat16);
        Action gemm(Tensor a) => () => a.matmul(a).Dispose();
        var t = Measure.RoundRobin([
            () => fp32Steps.With(null, () => fp32Steps.Prefill(0, PrefillRows)), () => bf16Steps.With(null, () => bf16Steps.Prefill(0, PrefillRows)),
            () => fp32Steps.With(null, fp32Steps.Decode), () => bf16Steps.With(null, bf16Steps.Decode),
            () => fp32Steps.With(gathered.Layers, fp32Steps.Decode), () => bf16Steps.With(gathered.Layers, bf16Steps.Decode),
            () => fp32One.With(null, fp32One.Decode), () => bf16One.With(null, bf16One.Decode),
            gemm(a32), gemm(a16),
        ], repeats);
        string Row(string name, int fp, int bf, double tokens, string target) =>
            $"| {name} | {tokens / t[fp].Median:F0} | {tokens / t[bf].Median:F0} | **{Measure.Ratio(t[fp], t[bf]).Format()}**{target} |";
        line("| measurement | fp32 tokens/s | bf16 tokens/s | bf16 ÷ fp32 |");
        line("|---|---:|---:|---|");
        line(Row($"prefill, {PrefillRows} prompts × {Prompt} tokens in one pass", 0, 1, PrefillRows * Prompt, ""));
        line(Row($"decode step, {Rows} rows, base alone", 2, 3, Rows, " (target ≥ 1.6)"));
        line(Row($"decode step, {Rows} rows, {Rows} adapters", 4, 5, Rows, ""));
        line(Row("decode step, 1 row, base alone", 6, 7, 1, ""));
        double flops = 2.0 * 2048 * 2048 * 2048;
        line($"| 2048² GEMM (GFLOP/s, not tokens/s) | {flops / t[8].Median / 1e9:F0} | {flops / t[9].Median / 1e9:F0} | {Measure.Ratio(t[8], t[9]).Format()} |");
        line("");
        line("| mixed 32-adapter decode ÷ base decode, same precision | ratio |");
        line("|---|---|");
        line($"| fp32 | **{Measure.Ratio(t[2], t[4]).Format("F3")}** (target ≥ 0.92) |");
        line($"| bf16 | **{Measure.Ratio(t[3], t[5]).Format("F3")}** (target ≥ 0.92) |");
        foreach (var a in adapters) a.Dispose();
    }
}
