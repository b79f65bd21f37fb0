using AdapterService.Core.Models;

using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// A new adapter as the weighted sum of adapters of the same method over the same layers, exactly, by concatenating
/// ranks: LoRA's Σᵢ wᵢ sᵢ Bᵢ Aᵢ = [B₁ … Bₙ] [w₁s₁A₁; …; wₙsₙAₙ] (PEFT's add_weighted_adapter "cat"), and RLRR's
/// Σᵢ wᵢ S_leftⁱ S_rightⁱᵀ with f = Σᵢ wᵢ fᵢ (the RLRR paper's appendix F; norms' s and f summed likewise). The result
/// has rank Σᵢ rᵢ.
/// </summary>
public static class AdapterComposition
{
    public static readonly string[] Methods = ["lora", "rlrr"];

    static Tensor WeightedSum(List<Dictionary<string, Tensor>> tensors, IReadOnlyList<double> weights, string key) =>
        tensors.Select((t, i) => t[key] * weights[i]).Aggregate((a, c) => a + c);

    /// <summary>Writes the combination of the adapters in <paramref name="folders"/> into <paramref name="output"/>; throws <see cref="ArgumentException"/> when they cannot be combined.</summary>
    public static AdapterConfig Combine(IReadOnlyList<string> folders, IReadOnlyList<double> weights, string output)
    {
        if (folders.Count < 2 || folders.Count != weights.Count) throw new ArgumentException("give at least two adapters and one weight per adapter");
        var configs = folders.Select(AdapterConfig.Load).ToList();
        string method = configs[0].Method;
        if (!Methods.Contains(method) || configs.Any(c => c.Method != method))
            throw new ArgumentException($"only adapters of one method, {string.Join(" or ", Methods)}, can be combined; these are {string.Join(", ", configs.Select(c => c.Method).Distinct())}");
        using var scope = NewDisposeScope();
        var tensors = folders.Select(TrainableAdapter.ReadWeights).ToList();
        foreach (var t in tensors) scope.Attach(t.Values);
        var keys = tensors[0].Keys.Order().ToList();
        if (tensors.Any(t => !t.Keys.Order().SequenceEqual(keys)))
            throw new ArgumentException("the adapters adapt different layers; only adapters over the same layers can be combined");

        var combined = new Dictionary<string, Tensor>();
        AdapterConfig config;
        if (configs[0] is LoraConfig)
        {
            var loras = configs.Cast<LoraConfig>().ToList();
            foreach (var key in keys.Where(k => k.EndsWith(".lora_A.weight", StringComparison.Ordinal)))
            {
                string b = key.Replace(".lora_A.", ".lora_B.");
                combined[key] = cat(tensors.Select((t, i) => t[key] * (weights[i] * loras[i].Scaling)).ToArray(), 0);   // [Σr, in]
                combined[b] = cat(tensors.Select(t => t[b]).ToArray(), 1);                                            // [out, Σr]
            }
            int rank = loras.Sum(l => l.Rank);
            config = loras[0] with { Rank = rank, Alpha = rank, UseRsLora = false, Dropout = 0 };   // scaling 1: the products carry wᵢ sᵢ
        }
        else
        {
            var rlrrs = configs.Cast<RlrrConfig>().ToList();
            foreach (var key in keys.Where(k => k.EndsWith(".rlrr_s_left", StringComparison.Ordinal)))
            {
                string path = key[..^".rlrr_s_left".Length];
                combined[key] = cat(tensors.Select((t, i) => t[key] * weights[i]).ToArray(), 0);                       // [Σr, in]
                combined[$"{path}.rlrr_s_right"] = cat(tensors.Select(t => t[$"{path}.rlrr_s_right"]).ToArray(), 0);   // [Σr, out]
                combined[$"{path}.rlrr_f"] = WeightedSum(tensors, weights, $"{path}.rlrr_f");
            }
            foreach (var key in keys.Where(k => k.EndsWith(".rlrr_scale", StringComparison.Ordinal) || k.EndsWith(".rlrr_shift", StringComparison.Ordinal)))
                combined[key] = WeightedSum(tensors, weights, key);                                                   // y + s ⊙ y + f is linear in (s, f)
            config = rlrrs[0] with { Rank = rlrrs.Sum(r => r.Rank) };
        }
        config.Validate();
        Directory.CreateDirectory(output);
        SafeTensors.Save(Path.Combine(output, TrainableAdapter.WeightsFileName),
            combined.ToDictionary(c => TrainableAdapter.PeftPrefix + c.Key, c => c.Value.contiguous()), new Dictionary<string, string> { ["format"] = "pt" });
        config.Save(output);
        return config;
    }
}
