using System.Text.Json;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>An adapter's options as the API takes and shows them; null where not given, or where the method has no such option.</summary>
public sealed record AdapterOptions(int? Rank = null, double? Alpha = null, double? Dropout = null, int? NumExperts = null, double? Scaling = null,
    string? RouterMean = null, bool? Monoscale = null, int? TopK = null, double? RouterAuxLossCoef = null);

/// <summary>The base model an adapter is loaded against: its linear layers (path → in, out) and norm layers (path → size).</summary>
public sealed record BaseShapes(IReadOnlyDictionary<string, (long In, long Out)> Linear, IReadOnlyDictionary<string, long> Norms);

/// <summary>
/// One adapter method as the service knows it (one entry of <see cref="AdapterMethods"/>): its names, what it can do,
/// and the few method-specific steps every generic part of the service calls (reading its config, making it trainable,
/// loading it for serving, API options, combination). A method lives in its own folder, after PEFT's tuners/&lt;method&gt;/.
/// </summary>
public abstract class AdapterMethod
{
    /// <summary>The API's <c>adapter.type</c> (and <see cref="AdapterConfig.Method"/>).</summary>
    public abstract string Name { get; }
    /// <summary><c>peft_type</c> in adapter_config.json (several names may share one, as LoRA and DoRA share LORA).</summary>
    public abstract string PeftType { get; }
    public abstract Type ConfigType { get; }

    /// <summary>Whether <see cref="TrainableAdapter.Merge"/> folds it into the base weights (its update does not depend on the input).</summary>
    public abstract bool CanMerge { get; }
    /// <summary>Whether <see cref="AdapterComposition.Combine"/> makes a weighted sum of adapters of this method.</summary>
    public virtual bool CanCombine => false;
    /// <summary>See <see cref="TrainableAdapter.TokenWise"/>.</summary>
    public abstract bool TokenWise { get; }
    /// <summary>Whether target_modules may not be empty (MixLoRA's experts adapt the feed-forward networks whatever it names).</summary>
    public virtual bool RequiresTargetModules => true;
    /// <summary>Key suffixes of tensors a file may repeat under several layers (counted once as parameters).</summary>
    public virtual IReadOnlyList<string> SharedTensorSuffixes => [];

    /// <summary>The API's target_modules when a request names none, from the base's linear layer names (PEFT's "all-linear").</summary>
    public virtual IReadOnlyList<string> DefaultTargets(IReadOnlyList<string> allLinear) => allLinear;
    /// <summary>A method-specific problem with the API's options beyond the checks all methods share, or null.</summary>
    public virtual string? CheckOptions(AdapterOptions options) => null;

    /// <summary>adapter_config.json as this method's config record (unchecked).</summary>
    public abstract AdapterConfig Read(JsonDocument json);
    /// <summary>The config an API request's options ask for, defaults filled in (unchecked).</summary>
    public abstract AdapterConfig FromOptions(AdapterOptions options, IReadOnlyList<string> targetModules);
    /// <summary>A config's options as the API shows them (null for options the method does not have).</summary>
    public abstract AdapterOptions ToOptions(AdapterConfig config);
    /// <summary>New trainable layers on the model's target modules, initialised as the method's paper says.</summary>
    public abstract TrainableAdapter CreateTrainable(nn.Module model, AdapterConfig config, Generator? init);
    /// <summary>A folder's tensors (keys without PEFT's prefix) as served, checked against the base.</summary>
    public abstract ServedAdapter LoadServed(AdapterConfig config, Dictionary<string, Tensor> tensors, BaseShapes shapes);

    /// <summary>
    /// The weighted sum of adapters of this method over the same layers (<paramref name="keys"/>, shared by all), its
    /// tensors written into <paramref name="combined"/>; only where <see cref="CanCombine"/>.
    /// </summary>
    public virtual AdapterConfig Combine(IReadOnlyList<AdapterConfig> configs, IReadOnlyList<Dictionary<string, Tensor>> tensors,
        IReadOnlyList<double> weights, IReadOnlyList<string> keys, Dictionary<string, Tensor> combined) =>
        throw new ArgumentException($"{Name} adapters cannot be combined");

    public override string ToString() => Name;
}

/// <summary>A method whose configs are <typeparamref name="TConfig"/>: the casts written once.</summary>
public abstract class AdapterMethod<TConfig> : AdapterMethod where TConfig : AdapterConfig
{
    public sealed override Type ConfigType => typeof(TConfig);
    public sealed override AdapterConfig Read(JsonDocument json) => json.Deserialize<TConfig>(AdapterConfig.Json)!;
    public sealed override AdapterOptions ToOptions(AdapterConfig config) => Options((TConfig)config);
    public sealed override TrainableAdapter CreateTrainable(nn.Module model, AdapterConfig config, Generator? init) => Create(model, (TConfig)config, init);
    public sealed override ServedAdapter LoadServed(AdapterConfig config, Dictionary<string, Tensor> tensors, BaseShapes shapes) =>
        Load((TConfig)config, tensors, shapes);

    protected abstract AdapterOptions Options(TConfig config);
    protected abstract TrainableAdapter Create(nn.Module model, TConfig config, Generator? init);
    protected abstract ServedAdapter Load(TConfig config, Dictionary<string, Tensor> tensors, BaseShapes shapes);
}
