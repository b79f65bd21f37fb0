using AdapterService.Core.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// A trained adapter's weights as the inference engine serves them, whatever its method (each method's
/// <see cref="AdapterMethod.LoadServed"/> fills its parts): LoRA and DoRA layers as <see cref="LoraWeights"/> (gathered
/// per row into one batched matmul), every other method's layers as an <see cref="IRowDelta"/> applied to the rows that
/// use it, feed-forward blocks a method replaces as an <see cref="IRowBlock"/>, norms' rescaling as (s, f).
/// </summary>
public sealed record ServedAdapter : IDisposable
{
    public required AdapterConfig Config { get; init; }
    public IReadOnlyDictionary<string, LoraWeights> Lora { get; init; } = new Dictionary<string, LoraWeights>();
    public IReadOnlyDictionary<string, IRowDelta> Deltas { get; init; } = new Dictionary<string, IRowDelta>();
    /// <summary>Feed-forward blocks the method replaces, by block path (MixLoRA).</summary>
    public IReadOnlyDictionary<string, IRowBlock> Blocks { get; init; } = new Dictionary<string, IRowBlock>();
    /// <summary>Norm layers' output rescaling y + s ⊙ y + f, by norm path (RLRR).</summary>
    public IReadOnlyDictionary<string, (Tensor Scale, Tensor Shift)> Norms { get; init; } = new Dictionary<string, (Tensor, Tensor)>();
    /// <summary>An image classifier's own classifier (weight [labels, hidden], bias [labels]) for <see cref="AdapterConfig.Labels"/>, or null.</summary>
    public (Tensor Weight, Tensor Bias)? Head { get; init; }

    public long Bytes => Lora.Values.Sum(w => w.Bytes) + Deltas.Values.Sum(d => d.Bytes) + Blocks.Values.Sum(b => b.Bytes)
                         + Norms.Values.Sum(n => 8 * n.Scale.numel())
                         + (Head is { } h ? 4 * (h.Weight.numel() + h.Bias.numel()) : 0);

    /// <summary>
    /// What the adapter is, by content: SHA-256 of its config and weights (the files' bytes, or a snapshot's tensors'),
    /// never its name (a name reused for other weights is another key). Caches of what an adapter computes (the engine's
    /// prefix cache) are keyed by it.
    /// </summary>
    public string ContentKey { get; init; } = "";

    /// <summary>Trained parameters, each shared tensor once (Lily's files repeat a module type's experts, and ours its router, under every layer).</summary>
    public long ParameterCount { get; private init; }

    /// <summary>Reads an adapter folder of any method, checked against the model's layers.</summary>
    public static ServedAdapter Load(string folder, nn.Module model) =>
        Load(folder, model.LinearLayers().Select(l => (l.Path, l.Layer.InFeatures, l.Layer.OutFeatures)), model.NormLayers().Select(n => (n.Path, n.Layer.Size)));

    /// <summary>Reads an adapter folder of any method, checked against the layers a base model's config describes.</summary>
    public static ServedAdapter Load(string folder, ModelConfig baseModel) => Load(folder, baseModel.LinearShapes(), baseModel.NormShapes());

    /// <summary>Reads an adapter folder of any method, checked against the base model's linear layers (path, in, out) and norms (path, size).</summary>
    public static ServedAdapter Load(string folder, IEnumerable<(string Path, long In, long Out)> linearLayers, IEnumerable<(string Path, long Size)> normLayers) =>
        FromTensors(AdapterConfig.Load(folder), TrainableAdapter.ReadWeights(folder), linearLayers, normLayers, FilesHash(folder));

    /// <summary>
    /// A trainable adapter's weights as they are now, served without a file: a copy of the adapter's own tensors (never
    /// the base's), so the trainer may keep stepping while requests run on this snapshot (reinforcement rollouts).
    /// </summary>
    public static ServedAdapter Of(TrainableAdapter adapter, nn.Module model)
    {
        Dictionary<string, Tensor> tensors;
        using (no_grad())
            tensors = adapter.SavedParameters().ToDictionary(p => p.Key, p => p.Value.detach().to_type(ScalarType.Float32).clone().DetachFromDisposeScope());
        return FromTensors(adapter.Config, tensors, model.LinearLayers().Select(l => (l.Path, l.Layer.InFeatures, l.Layer.OutFeatures)),
            model.NormLayers().Select(n => (n.Path, n.Layer.Size)), TensorsHash(adapter.Config, tensors));
    }

    /// <summary>Serves <paramref name="tensors"/> (keyed without the PEFT prefix, float32; taken over: those not kept are disposed).</summary>
    static ServedAdapter FromTensors(AdapterConfig config, Dictionary<string, Tensor> tensors,
        IEnumerable<(string Path, long In, long Out)> linearLayers, IEnumerable<(string Path, long Size)> normLayers, string contentKey)
    {
        var method = AdapterMethods.Of(config);
        var layers = linearLayers.ToDictionary(l => l.Path, l => (l.In, l.Out));
        var kept = new HashSet<Tensor>(ReferenceEqualityComparer.Instance);
        try
        {
            long parameterCount = CountParameters(tensors, method.SharedTensorSuffixes);
            (Tensor Weight, Tensor Bias)? head = config.Labels is { } labels ? FindHead(tensors, labels.Count, layers) : null;
            var methodTensors = head is null ? tensors
                : tensors.Where(t => t.Key is not (TrainableAdapter.HeadWeightKey or TrainableAdapter.HeadBiasKey)).ToDictionary();
            var served = method.LoadServed(config, methodTensors, new BaseShapes(layers, normLayers.ToDictionary(n => n.Path, n => n.Size)))
                with { Head = head, ParameterCount = parameterCount, ContentKey = contentKey };
            kept.UnionWith(served.Tensors);
            return served;
        }
        finally
        {
            foreach (var t in tensors.Values.Where(t => !kept.Contains(t))) t.Dispose();
        }
    }

    /// <summary>SHA-256 over a snapshot's config (as saved) and its tensors' float32 bytes, by key, each length-prefixed.</summary>
    static string TensorsHash(AdapterConfig config, Dictionary<string, Tensor> tensors)
    {
        using var scope = NewDisposeScope();   // the contiguous CPU views made to read the bytes
        using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        void Append(byte[] bytes)
        {
            hash.AppendData(BitConverter.GetBytes((long)bytes.Length));
            hash.AppendData(bytes);
        }
        Append(System.Text.Encoding.UTF8.GetBytes(config.ToJson()));
        foreach (var (key, tensor) in tensors.OrderBy(t => t.Key, StringComparer.Ordinal))
        {
            Append(System.Text.Encoding.UTF8.GetBytes(key));
            Append(tensor.contiguous().cpu().bytes.ToArray());
        }
        return Convert.ToHexString(hash.GetHashAndReset());
    }

    /// <summary>SHA-256 over the config file and the weights file, each length-prefixed.</summary>
    static string FilesHash(string folder)
    {
        using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        foreach (string file in new[] { AdapterConfig.FileName, TrainableAdapter.WeightsFileName })
        {
            using var stream = File.OpenRead(Path.Combine(folder, file));
            hash.AppendData(BitConverter.GetBytes(stream.Length));
            var buffer = new byte[1 << 16];
            for (int read; (read = stream.Read(buffer)) > 0;) hash.AppendData(buffer, 0, read);
        }
        return Convert.ToHexString(hash.GetHashAndReset());
    }

    /// <summary>Every tensor it holds.</summary>
    IEnumerable<Tensor> Tensors =>
        Lora.Values.SelectMany(w => w.Magnitude is null ? new[] { w.A, w.B } : [w.A, w.B, w.Magnitude])
            .Concat(Deltas.Values.SelectMany(d => d.Tensors)).Concat(Blocks.Values.SelectMany(b => b.Tensors))
            .Concat(Norms.Values.SelectMany(n => new[] { n.Scale, n.Shift })).Concat(Head is { } h ? [h.Weight, h.Bias] : []);

    /// <summary>The adapter's own classifier in <paramref name="tensors"/>, checked against its labels and the base's hidden size.</summary>
    static (Tensor Weight, Tensor Bias) FindHead(Dictionary<string, Tensor> tensors, int labels, Dictionary<string, (long In, long Out)> layers)
    {
        if (!layers.TryGetValue("classifier", out var baseHead)) throw new InvalidDataException("the adapter has labels, but its base model has no classifier");
        if (!tensors.TryGetValue(TrainableAdapter.HeadWeightKey, out var weight) || !tensors.TryGetValue(TrainableAdapter.HeadBiasKey, out var bias))
            throw new InvalidDataException($"the adapter has labels, but {TrainableAdapter.WeightsFileName} has no {TrainableAdapter.HeadWeightKey} and {TrainableAdapter.HeadBiasKey}");
        if (!weight.shape.SequenceEqual([labels, baseHead.In]) || !bias.shape.SequenceEqual([(long)labels]))
            throw new InvalidDataException(
                $"the classifier is [{string.Join(", ", weight.shape)}] + [{string.Join(", ", bias.shape)}]; {labels} labels on this base need [{labels}, {baseHead.In}] + [{labels}]");
        return (weight, bias);
    }

    static long CountParameters(Dictionary<string, Tensor> tensors, IReadOnlyList<string> sharedSuffixes)
    {
        var seen = new HashSet<string>();
        long count = 0;
        foreach (var (key, t) in tensors)
        {
            bool maybeShared = sharedSuffixes.Any(suffix => key.EndsWith(suffix, StringComparison.Ordinal));
            using var contiguous = t.contiguous();
            if (!maybeShared || seen.Add($"{key.Split('.')[^2]}:{Convert.ToHexString(System.Security.Cryptography.SHA256.HashData(contiguous.bytes))}"))
                count += t.numel();
        }
        return count;
    }

    public void Dispose()
    {
        foreach (var w in Lora.Values) w.Dispose();
        foreach (var d in Deltas.Values) d.Dispose();
        foreach (var b in Blocks.Values) b.Dispose();
        foreach (var (scale, shift) in Norms.Values) { scale.Dispose(); shift.Dispose(); }
        if (Head is { } h) { h.Weight.Dispose(); h.Bias.Dispose(); }
    }
}
