using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// A LoRA (or DoRA) adapter: one <see cref="LoraLayer"/> (or <see cref="DoraLayer"/>) per target layer, saved with PEFT's
/// keys <c>{path}.lora_A.weight</c>, <c>{path}.lora_B.weight</c> (and <c>{path}.lora_magnitude_vector</c>).
/// </summary>
public sealed class LoraAdapter : TrainableAdapter<LoraConfig>
{
    LoraAdapter(LoraConfig config, Dictionary<string, nn.Module> layers) : base(config, layers) { }

    /// <summary>New LoRA (or DoRA) layers on the model's target modules, A drawn from <paramref name="seed"/> when given.</summary>
    public static LoraAdapter Create(nn.Module model, LoraConfig config, long? seed = null)
    {
        using var init = seed is { } s ? new Generator().manual_seed(s) : null;
        return Create(model, config, init);
    }

    /// <summary>The layers as LoRA layers (for a LoRA adapter; a DoRA one throws).</summary>
    public IReadOnlyDictionary<string, LoraLayer> LoraLayers => layers.ToDictionary(l => l.Key, l => (LoraLayer)l.Value);

    internal static LoraAdapter Create(nn.Module model, LoraConfig config, Generator? init) =>
        new(config, TargetModules.Find(model, config.TargetModules).ToDictionary(t => t.Path, t => config.UseDora
            ? (nn.Module)new DoraLayer(t.Layer, config, init)
            : new LoraLayer(t.Layer.InFeatures, t.Layer.OutFeatures, config, init)));

    /// <summary>Each layer's weights as served (live views of the parameters).</summary>
    public IReadOnlyDictionary<string, LoraWeights> Weights() => layers.ToDictionary(l => l.Key, l => ((ILoraLayer)l.Value).Weights());

    public override IEnumerable<(string Key, Parameter Value)> NamedParameters() =>
        layers.SelectMany(l => ((ILoraLayer)l.Value).SavedParameters().Select(p => ($"{l.Key}.{p.Name}", p.Value)));

    /// <summary>W ← W + s·B A (LoRA), or W ← m ⊙ (W + s·B A) / ‖W + s·B A‖ (DoRA); the layers' slots are emptied.</summary>
    public override void Merge(nn.Module model)
    {
        var slots = model.LinearLayers().ToDictionary(l => l.Path, l => l.Layer);
        using var noGrad = no_grad();
        using var scope = NewDisposeScope();
        foreach (var (path, w) in Weights())
        {
            var layer = slots[path];
            var adapted = layer.weight + Lora.DeltaWeight(w.A, w.B, w.Scaling);                     // [out, in]
            layer.weight.copy_(w.Magnitude is { } m ? adapted * Dora.OutputScale(layer.weight, w.A, w.B, w.Scaling, m).unsqueeze(1) : adapted);
            layer.Adapter = null;
        }
    }

    /// <summary>Reads a PEFT LoRA/DoRA folder's weights as served, checked against the base model's layers (path, in, out).</summary>
    public static Dictionary<string, LoraWeights> LoadServed(LoraConfig config, Dictionary<string, Tensor> tensors,
        IReadOnlyDictionary<string, (long In, long Out)> layers)
    {
        var weights = new Dictionary<string, LoraWeights>();
        foreach (var (key, a) in tensors)
        {
            if (!key.EndsWith(".lora_A.weight", StringComparison.Ordinal)) continue;
            string path = key[..^".lora_A.weight".Length];
            if (!layers.TryGetValue(path, out var layer))
                throw new InvalidDataException($"{key}: the base model has no linear layer {path}");
            if (!tensors.TryGetValue($"{path}.lora_B.weight", out var b))
                throw new InvalidDataException($"{key}: its lora_B is missing");
            if (a.ndim != 2 || b.ndim != 2 || a.shape[0] != b.shape[1] || a.shape[1] != layer.In || b.shape[0] != layer.Out)
                throw new InvalidDataException($"{key}: shapes A [{string.Join(",", a.shape)}] B [{string.Join(",", b.shape)}] do not fit layer {path}");
            Tensor? magnitude = null;
            if (config.UseDora)
            {
                // PEFT writes the magnitude with or without a trailing ".weight" depending on its version.
                magnitude = tensors.GetValueOrDefault($"{path}.lora_magnitude_vector") ?? tensors.GetValueOrDefault($"{path}.lora_magnitude_vector.weight")
                    ?? throw new InvalidDataException($"{key}: use_dora is set but its lora_magnitude_vector is missing");
                if (magnitude.ndim != 1 || magnitude.shape[0] != layer.Out)
                    throw new InvalidDataException($"{path}.lora_magnitude_vector: shape [{string.Join(",", magnitude.shape)}] does not fit layer {path}");
            }
            weights[path] = new LoraWeights(a, b, config.Scaling, magnitude);
        }
        if (weights.Count == 0) throw new InvalidDataException($"{WeightsFileName} holds no LoRA weights");
        return weights;
    }
}
