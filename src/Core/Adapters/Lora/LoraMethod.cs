using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// LoRA (LoRA: Low-Rank Adaptation of Large Language Models, https://arxiv.org/abs/2106.09685) and, as PEFT writes it,
/// DoRA as LoRA with <c>use_dora</c> (DoRA: Weight-Decomposed Low-Rank Adaptation, https://arxiv.org/abs/2402.09353):
/// one config, layer and file layout, two API types.
/// </summary>
public sealed class LoraMethod(bool dora) : AdapterMethod<LoraConfig>
{
    public override string Name => dora ? "dora" : "lora";
    public override string PeftType => LoraConfig.Type;
    public override bool CanMerge => true;
    /// <summary>LoRA's updates add up by concatenating ranks; DoRA's normalisation of W + ΔW does not distribute over a sum.</summary>
    public override bool CanCombine => !dora;
    public override bool TokenWise => true;

    public override AdapterConfig FromOptions(AdapterOptions o, IReadOnlyList<string> targetModules) => new LoraConfig
    {
        TargetModules = targetModules, UseDora = dora, Rank = o.Rank ?? 8, Alpha = o.Alpha ?? 2 * (o.Rank ?? 8), Dropout = o.Dropout ?? 0,
    };

    protected override AdapterOptions Options(LoraConfig c) => new(c.Rank, c.Alpha, c.Dropout);

    protected override TrainableAdapter Create(nn.Module model, LoraConfig config, Generator? init) => LoraAdapter.Create(model, config, init);

    protected override ServedAdapter Load(LoraConfig config, Dictionary<string, Tensor> tensors, BaseShapes shapes) =>
        new() { Config = config, Lora = LoraAdapter.LoadServed(config, tensors, shapes.Linear) };

    /// <summary>
    /// Σᵢ wᵢ sᵢ Bᵢ Aᵢ = [B₁ … Bₙ] [w₁s₁A₁; …; wₙsₙAₙ], exactly (PEFT's add_weighted_adapter "cat"): rank Σᵢ rᵢ, scaling 1.
    /// </summary>
    public override AdapterConfig Combine(IReadOnlyList<AdapterConfig> configs, IReadOnlyList<Dictionary<string, Tensor>> tensors,
        IReadOnlyList<double> weights, IReadOnlyList<string> keys, Dictionary<string, Tensor> combined)
    {
        if (!CanCombine) return base.Combine(configs, tensors, weights, keys, combined);
        var loras = configs.Cast<LoraConfig>().ToList();
        foreach (var key in keys.Where(k => k.EndsWith(".lora_A.weight", StringComparison.Ordinal)))
        {
            string b = key.Replace(".lora_A.", ".lora_B.");
            combined[key] = cat(tensors.Select((t, i) => t[key] * (weights[i] * loras[i].Scaling)).ToArray(), 0);   // [Σr, in]
            combined[b] = cat(tensors.Select(t => t[b]).ToArray(), 1);                                            // [out, Σr]
        }
        int rank = loras.Sum(l => l.Rank);
        return loras[0] with { Rank = rank, Alpha = rank, UseRsLora = false, Dropout = 0 };   // scaling 1: the products carry wᵢ sᵢ
    }
}
