using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>RLRR (Low-Rank Rescaled Vision Transformer Fine-Tuning: A Residual Design Approach, https://arxiv.org/abs/2403.19067).</summary>
public sealed class RlrrMethod : AdapterMethod<RlrrConfig>
{
    public override string Name => "rlrr";
    public override string PeftType => RlrrConfig.Type;
    public override bool CanMerge => true;
    public override bool CanCombine => true;
    public override bool TokenWise => true;

    public override string? CheckOptions(AdapterOptions options) => options.Rank > 64 ? "adapter.rank must be between 1 and 64 for rlrr." : null;

    public override AdapterConfig FromOptions(AdapterOptions o, IReadOnlyList<string> targetModules) =>
        new RlrrConfig { TargetModules = targetModules, Rank = o.Rank ?? 1 };

    protected override AdapterOptions Options(RlrrConfig c) => new(c.Rank);

    protected override TrainableAdapter Create(nn.Module model, RlrrConfig config, Generator? init) => RlrrAdapter.Create(model, config, init);

    protected override ServedAdapter Load(RlrrConfig config, Dictionary<string, Tensor> tensors, BaseShapes shapes) => new()
    {
        Config = config, Deltas = RlrrAdapter.LoadServed(config, tensors, shapes.Linear), Norms = RlrrAdapter.LoadServedNorms(tensors, shapes.Norms),
    };

    /// <summary>
    /// Σᵢ wᵢ S_leftⁱ S_rightⁱᵀ by concatenating ranks, with f = Σᵢ wᵢ fᵢ (the RLRR paper's appendix F): rank Σᵢ rᵢ. Norms'
    /// s and f are summed likewise, y + s ⊙ y + f being linear in (s, f).
    /// </summary>
    public override AdapterConfig Combine(IReadOnlyList<AdapterConfig> configs, IReadOnlyList<Dictionary<string, Tensor>> tensors,
        IReadOnlyList<double> weights, IReadOnlyList<string> keys, Dictionary<string, Tensor> combined)
    {
        var rlrrs = configs.Cast<RlrrConfig>().ToList();
        foreach (var key in keys.Where(k => k.EndsWith(".rlrr_s_left", StringComparison.Ordinal)))
        {
            string path = key[..^".rlrr_s_left".Length];
            combined[key] = cat(tensors.Select((t, i) => t[key] * weights[i]).ToArray(), 0);                       // [Σr, in]
            combined[$"{path}.rlrr_s_right"] = cat(tensors.Select(t => t[$"{path}.rlrr_s_right"]).ToArray(), 0);   // [Σr, out]
            combined[$"{path}.rlrr_f"] = AdapterComposition.WeightedSum(tensors, weights, $"{path}.rlrr_f");
        }
        foreach (var key in keys.Where(k => k.EndsWith(".rlrr_scale", StringComparison.Ordinal) || k.EndsWith(".rlrr_shift", StringComparison.Ordinal)))
            combined[key] = AdapterComposition.WeightedSum(tensors, weights, key);
        return rlrrs[0] with { Rank = rlrrs.Sum(r => r.Rank) };
    }
}
