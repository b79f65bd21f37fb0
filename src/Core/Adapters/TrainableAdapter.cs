using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// A trainable adapter over a frozen base model, whatever its method: the mechanics every method shares (which
/// layers it wraps, its parameters, dropout switching, the PEFT folder format) are written here once; each method's
/// file holds its math. Parameters are saved under PEFT's keys, <c>base_model.model.{module path}.{name}</c>.
/// </summary>
public abstract class TrainableAdapter : IDisposable
{
    public const string WeightsFileName = "adapter_model.safetensors";
    public const string PeftPrefix = "base_model.model.";

    public abstract AdapterConfig Config { get; }

    /// <summary>Per target layer path, the method's layer module put into that layer's slot.</summary>
    public abstract IReadOnlyDictionary<string, nn.Module> Layers { get; }

    /// <summary>Every trainable tensor of the method by its key in the file, without the PEFT prefix (shared tensors appear under each user's key).</summary>
    public abstract IEnumerable<(string Key, Parameter Value)> NamedParameters();

    /// <summary>
    /// An image classifier's own classifier when its labels differ from the base's (<see cref="AdapterConfig.Labels"/>,
    /// PEFT's modules_to_save): trained whole and saved as <c>classifier.weight</c> and <c>classifier.bias</c>.
    /// </summary>
    public Linear? Head { get; private set; }

    public const string HeadWeightKey = "classifier.weight", HeadBiasKey = "classifier.bias";

    /// <summary>The method's parameters and the classifier's, as saved.</summary>
    public IEnumerable<(string Key, Parameter Value)> SavedParameters() =>
        Head is null ? NamedParameters() : NamedParameters().Concat([(HeadWeightKey, Head.weight!), (HeadBiasKey, Head.bias!)]);

    /// <summary>New adapter layers for the model's target modules, initialised as the method's paper says (from <paramref name="seed"/> when given).</summary>
    public static TrainableAdapter Create(nn.Module model, AdapterConfig config, long? seed = null)
    {
        using var init = seed is { } s ? new Generator().manual_seed(s) : null;
        var adapter = AdapterMethods.Of(config).CreateTrainable(model, config, init);
        if (config.Labels is { Count: > 0 } labels)
        {
            var hidden = model.LinearLayers().SingleOrDefault(l => l.Path == "classifier").Layer?.InFeatures
                         ?? throw new ArgumentException("labels are given, but the model has no classifier");
            adapter.Head = nn.Linear(hidden, labels.Count);
            using var noGrad = no_grad();
            adapter.Head.weight!.normal_(0, 0.02, init);                                 // Hugging Face's initializer_range
            adapter.Head.bias!.zero_();
        }
        return adapter;
    }

    /// <summary>Puts this adapter's layers into the model's slots (one model instance trains one adapter at a time).</summary>
    public virtual void Attach(nn.Module model)
    {
        var slots = Slots(model);
        foreach (var (path, layer) in Layers) slots[path]((ILinearAdapter)layer);
    }

    /// <summary>Setters of the model's output-adapter slots by module path: its linear layers and its norms.</summary>
    public static Dictionary<string, Action<ILinearAdapter?>> Slots(nn.Module model) =>
        model.LinearLayers().Select(l => (l.Path, Set: (Action<ILinearAdapter?>)(a => l.Layer.Adapter = a)))
            .Concat(model.NormLayers().Select(n => (n.Path, Set: (Action<ILinearAdapter?>)(a => n.Layer.Adapter = a))))
            .ToDictionary(s => s.Path, s => s.Set);

    /// <summary>Empties the model's slots (linear layers, norms and feed-forward blocks).</summary>
    public static void Detach(nn.Module model)
    {
        foreach (var (_, set) in Slots(model)) set(null);
        foreach (var (_, block) in model.FeedForwardBlocks()) block.Adapter = null;
    }

    /// <summary>The distinct trainable parameters (a tensor shared by several layers counts once).</summary>
    public IEnumerable<Parameter> Parameters() => SavedParameters().Select(p => p.Value).DistinctBy(p => p.Handle);

    public long ParameterCount => Parameters().Sum(p => p.numel());

    /// <summary>Switches training behaviour (dropout, drawn from <paramref name="dropout"/>) on or off.</summary>
    public virtual void Train(bool on, Generator? dropout = null)
    {
        foreach (var layer in Layers.Values)
        {
            if (layer is IDropoutLayer d) d.DropoutGenerator = dropout;
            layer.train(on);
        }
    }

    /// <summary>
    /// Folds the adapter into the model's weights, so the model alone computes what model + adapter did (for exporting
    /// a merged model); throws <see cref="NotSupportedException"/> for methods whose update depends on the input.
    /// </summary>
    public virtual void Merge(nn.Module model) =>
        throw new NotSupportedException($"{Config.Method} adapters cannot be merged into the weights: their update depends on the input");

    /// <summary>
    /// Whether each token's adapted output depends on that token alone and the method adds no loss of its own: then
    /// packing several examples into one row and recomputing a layer alone (gradient checkpointing) change nothing
    /// (<see cref="AdapterMethod.TokenWise"/>).
    /// </summary>
    public bool TokenWise => AdapterMethods.Of(Config).TokenWise;

    /// <summary>A term the method adds to the training loss (MixLoRA's load balance), or null.</summary>
    public virtual Tensor? AuxiliaryLoss() => null;

    /// <summary>What the method wants shown in the job's events after a step (router weights, expert load), or null.</summary>
    public virtual object? Statistics() => null;

    public void Save(string folder)
    {
        using var scope = NewDisposeScope();
        Directory.CreateDirectory(folder);
        SafeTensors.Save(Path.Combine(folder, WeightsFileName),
            SavedParameters().ToDictionary(p => PeftPrefix + p.Key, p => p.Value.detach().contiguous()),
            new Dictionary<string, string> { ["format"] = "pt" });
        Config.Save(folder);
    }

    /// <summary>Overwrites the parameters with those saved in <paramref name="folder"/> (a resumed job's), checking every key and shape.</summary>
    public void LoadWeights(string folder)
    {
        var tensors = ReadWeights(folder);
        try
        {
            using var noGrad = no_grad();
            foreach (var (key, parameter) in SavedParameters())
            {
                if (!tensors.TryGetValue(key, out var t)) throw new InvalidDataException($"{WeightsFileName} has no tensor {key}");
                if (!t.shape.SequenceEqual(parameter.shape))
                    throw new InvalidDataException($"{key}: shape [{string.Join(",", t.shape)}] in {WeightsFileName}, [{string.Join(",", parameter.shape)}] in the adapter");
                parameter.copy_(t);
            }
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    /// <summary>A folder's tensors as float32, keyed without the PEFT prefix; the caller disposes them.</summary>
    public static Dictionary<string, Tensor> ReadWeights(string folder)
    {
        string path = Path.Combine(folder, WeightsFileName);
        if (!File.Exists(path)) throw new InvalidDataException($"{WeightsFileName} is missing");
        var result = new Dictionary<string, Tensor>();
        foreach (var (key, t) in SafeTensors.Load(path))
        {
            result[key.StartsWith(PeftPrefix, StringComparison.Ordinal) ? key[PeftPrefix.Length..] : key] =
                t.dtype == ScalarType.Float32 ? t : t.to_type(ScalarType.Float32);
            if (t.dtype != ScalarType.Float32) t.Dispose();
        }
        return result;
    }

    public virtual void Dispose()
    {
        Head?.Dispose();
        foreach (var layer in Layers.Values) layer.Dispose();
    }
}

/// <summary>The shape every method's adapter has: its typed config and its layers by the path of the layer they adapt.</summary>
public abstract class TrainableAdapter<TConfig>(TConfig config, Dictionary<string, nn.Module> layers) : TrainableAdapter where TConfig : AdapterConfig
{
    protected readonly TConfig config = config;
    protected readonly Dictionary<string, nn.Module> layers = layers;

    public override AdapterConfig Config => config;
    public override IReadOnlyDictionary<string, nn.Module> Layers => layers;
}

/// <summary>A method layer with dropout whose masks a trainer's generator draws (so runs are reproducible).</summary>
public interface IDropoutLayer
{
    Generator? DropoutGenerator { get; set; }
}

/// <summary>Dropout drawn from a given generator (TorchSharp's functional dropout takes none).</summary>
public static class SeededDropout
{
    public static Tensor Apply(Tensor x, double p, bool training, Generator? generator) =>
        training && p > 0 ? x * rand(x.shape, generator: generator).ge(p) / (1 - p) : x;
}

/// <summary>
/// The base layer a method layer reads (RLRR and DoRA use W), held outside the module's own fields so that
/// RegisterComponents does not take the frozen layer for a submodule of the adapter (its parameters, its disposal).
/// </summary>
public sealed record FrozenLayer(AdaptableLinear Layer);
