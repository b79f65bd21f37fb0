using AdapterService.Core.Models;

using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// A new adapter as the weighted sum of adapters of the same method over the same layers, exactly, for the methods
/// that declare it (<see cref="AdapterMethod.CanCombine"/>; each method's folder holds its rule, e.g. LoRA's and RLRR's
/// concatenation of ranks). The checks and the file written are the same for every method.
/// </summary>
public static class AdapterComposition
{
    /// <summary>Σᵢ wᵢ tᵢ[key].</summary>
    public static Tensor WeightedSum(IReadOnlyList<Dictionary<string, Tensor>> tensors, IReadOnlyList<double> weights, string key) =>
        tensors.Select((t, i) => t[key] * weights[i]).Aggregate((a, c) => a + c);

    /// <summary>Writes the combination of the adapters in <paramref name="folders"/> into <paramref name="output"/>; throws <see cref="ArgumentException"/> when they cannot be combined.</summary>
    public static AdapterConfig Combine(IReadOnlyList<string> folders, IReadOnlyList<double> weights, string output)
    {
        if (folders.Count < 2 || folders.Count != weights.Count) throw new ArgumentException("give at least two adapters and one weight per adapter");
        var configs = folders.Select(AdapterConfig.Load).ToList();
        string method = configs[0].Method;
        if (!AdapterMethods.Combinable.Contains(method) || configs.Any(c => c.Method != method))
            throw new ArgumentException($"only adapters of one method, {string.Join(" or ", AdapterMethods.Combinable)}, can be combined; these are {string.Join(", ", configs.Select(c => c.Method).Distinct())}");
        using var scope = NewDisposeScope();
        var tensors = folders.Select(TrainableAdapter.ReadWeights).ToList();
        foreach (var t in tensors) scope.Attach(t.Values);
        var keys = tensors[0].Keys.Order().ToList();
        if (tensors.Any(t => !t.Keys.Order().SequenceEqual(keys)))
            throw new ArgumentException("the adapters adapt different layers; only adapters over the same layers can be combined");

        var combined = new Dictionary<string, Tensor>();
        var config = AdapterMethods.Of(configs[0]).Combine(configs, tensors, weights, keys, combined);
        config.Validate();
        Directory.CreateDirectory(output);
        SafeTensors.Save(Path.Combine(output, TrainableAdapter.WeightsFileName),
            combined.ToDictionary(c => TrainableAdapter.PeftPrefix + c.Key, c => c.Value.contiguous()), new Dictionary<string, string> { ["format"] = "pt" });
        config.Save(output);
        return config;
    }
}
