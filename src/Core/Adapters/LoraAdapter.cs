using AdapterService.Core.Formats;
using AdapterService.Core.Models;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// A LoRA adapter over a base model: one <see cref="LoraLayer"/> per target layer, keyed by module path.
/// Saves and loads the PEFT folder format (adapter_config.json + adapter_model.safetensors with
/// <c>base_model.model.{path}.lora_A.weight</c> keys).
/// </summary>
public sealed class LoraAdapter : IDisposable
{
    public const string WeightsFileName = "adapter_model.safetensors";
    const string PeftPrefix = "base_model.model.";

    public LoraConfig Config { get; }
    public IReadOnlyDictionary<string, LoraLayer> Layers { get; }

    LoraAdapter(LoraConfig config, Dictionary<string, LoraLayer> layers) => (Config, Layers) = (config, layers);

    /// <summary>New adapter layers for the model's target modules, initialised as the method says (from <paramref name="seed"/> when given).</summary>
    public static LoraAdapter Create(nn.Module model, LoraConfig config, long? seed = null)
    {
        using var init = seed is { } s ? new Generator().manual_seed(s) : null;
        return new(config, TargetModules.Find(model, config.TargetModules)
            .ToDictionary(t => t.Path, t => new LoraLayer(t.Layer.InFeatures, t.Layer.OutFeatures, config, init)));
    }

    /// <summary>Puts this adapter into the model's layer slots (one model instance serves one adapter at a time this way).</summary>
    public void Attach(nn.Module model)
    {
        var byPath = model.LinearLayers().ToDictionary(l => l.Path, l => l.Layer);
        foreach (var (path, layer) in Layers) byPath[path].Adapter = layer;
    }

    public IEnumerable<Parameter> Parameters() => Layers.Values.SelectMany(l => l.parameters());

    public long ParameterCount => Parameters().Sum(p => p.numel());

    /// <summary>Switches dropout on (drawing masks from <paramref name="dropout"/>) or off.</summary>
    public void Train(bool on, Generator? dropout = null)
    {
        foreach (var l in Layers.Values)
        {
            l.train(on);
            l.DropoutGenerator = dropout;
        }
    }

    public void Save(string folder)
    {
        using var scope = NewDisposeScope();
        Directory.CreateDirectory(folder);
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (path, layer) in Layers)
        {
            tensors[$"{PeftPrefix}{path}.lora_A.weight"] = layer.lora_A.weight!.detach();
            tensors[$"{PeftPrefix}{path}.lora_B.weight"] = layer.lora_B.weight!.detach();
        }
        SafeTensors.Save(Path.Combine(folder, WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        Config.Save(folder);
    }

    /// <summary>Reads a PEFT LoRA folder as served weights, checked against the base model's layer shapes.</summary>
    public static (LoraConfig Config, Dictionary<string, LoraWeights> Weights) Load(string folder, nn.Module model) =>
        Load(folder, model.LinearLayers().Select(l => (l.Path, l.Layer.InFeatures, l.Layer.OutFeatures)));

    /// <summary>Reads a PEFT LoRA folder as served weights, checked against linear layers given as (path, in, out).</summary>
    public static (LoraConfig Config, Dictionary<string, LoraWeights> Weights) Load(string folder, IEnumerable<(string Path, long In, long Out)> linearLayers)
    {
        var config = LoraConfig.Load(folder);
        var tensors = SafeTensors.Load(Path.Combine(folder, WeightsFileName));
        try
        {
            var layers = linearLayers.ToDictionary(l => l.Path);
            var weights = new Dictionary<string, LoraWeights>();
            foreach (var (key, a) in tensors)
            {
                if (!key.EndsWith(".lora_A.weight", StringComparison.Ordinal)) continue;
                string path = key[..^".lora_A.weight".Length];
                path = path.StartsWith(PeftPrefix, StringComparison.Ordinal) ? path[PeftPrefix.Length..] : path;
                if (!layers.TryGetValue(path, out var layer))
                    throw new InvalidDataException($"{key}: the base model has no linear layer {path}");
                if (!tensors.TryGetValue(key.Replace(".lora_A.", ".lora_B."), out var b))
                    throw new InvalidDataException($"{key}: its lora_B is missing");
                if (a.ndim != 2 || b.ndim != 2 || a.shape[0] != b.shape[1] || a.shape[1] != layer.In || b.shape[0] != layer.Out)
                    throw new InvalidDataException($"{key}: shapes A [{string.Join(",", a.shape)}] B [{string.Join(",", b.shape)}] do not fit layer {path}");
                weights[path] = new LoraWeights(a.to_type(ScalarType.Float32), b.to_type(ScalarType.Float32), config.Scaling);
            }
            if (weights.Count == 0) throw new InvalidDataException($"{WeightsFileName} holds no LoRA weights");
            return (config, weights);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();   // SafeTensors.Load hands them over outside any dispose scope
        }
    }

    public void Dispose() { foreach (var l in Layers.Values) l.Dispose(); }
}
