using System.Globalization;
using System.Text.Json;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>One tensor of a model's Hugging Face checkpoint and the parameter it fills; Transposed when the file keeps it as [in, out].</summary>
public sealed record CheckpointTensor(string Key, Parameter Parameter, bool Transposed = false);

/// <summary>A model <see cref="ModelFolder"/> loads and saves in Hugging Face layout.</summary>
public interface IHuggingFaceModel
{
    ModelConfig ModelConfig { get; }

    /// <summary>Every tensor of the checkpoint, each parameter once (a tied output head is its embedding's).</summary>
    IEnumerable<CheckpointTensor> CheckpointTensors();

    /// <summary>The key a stored tensor has in <see cref="CheckpointTensors"/>, or null for one to skip (buffers older exports saved).</summary>
    string? CanonicalKey(string key) => key;
}

/// <summary>
/// A base model stored as a Hugging Face folder: config.json + model.safetensors, or shards listed by
/// model.safetensors.index.json (+ tokenizer files). The family comes from config.json's model_type.
/// </summary>
public static class ModelFolder
{
    public const string ConfigFile = "config.json", WeightsFile = "model.safetensors", IndexFile = "model.safetensors.index.json";

    /// <summary>
    /// Loads a frozen model in evaluation mode: a <see cref="LlamaForCausalLM"/> (or Qwen2, Qwen3, Mistral on its decoder),
    /// <see cref="GPT2LMHeadModel"/> or <see cref="ViTForImageClassification"/>. Its weight matrices are kept in
    /// <paramref name="precision"/>'s type (float32 when none is given: exact, what the reference tests compare), mapped from
    /// the file where it already holds them in that type; all other parameters are float32.
    /// </summary>
    public static nn.Module<Tensor, Tensor> Load(string folder, BasePrecision? precision = null)
    {
        var config = ModelConfig.Load(Path.Combine(folder, ConfigFile));
        CheckSize(config, folder);
        nn.Module<Tensor, Tensor> model;
        // What CheckSize cannot see (position embeddings: GPT-2's n_positions, ViT's image_size) fails here, as the config's fault.
        try { model = config.CreateModel(); }
        catch (System.Runtime.InteropServices.ExternalException e) when (e.Message.Contains("can't allocate memory", StringComparison.Ordinal))
        {
            throw new InvalidDataException($"{ConfigFile}: its sizes make a model too large to build (the allocation failed); the config does not describe these weights", e);
        }
        try
        {
            LoadWeights((IHuggingFaceModel)model, model, folder, precision ?? BasePrecision.Float32);
        }
        catch
        {
            model.Dispose();
            throw;
        }
        foreach (var p in model.parameters()) p.requires_grad = false;
        model.eval();
        return model;
    }

    /// <summary>
    /// What a stored folder holds now, for caches keyed by it: its files' names, sizes and write times. A base deleted and
    /// imported again under the same id is a new version of the same folder, so an engine or tokenizer cache that kept the
    /// old one reloads instead of serving the old weights.
    /// </summary>
    public static string Version(string folder) => !Directory.Exists(folder) ? "" : string.Join("|", new DirectoryInfo(folder).EnumerateFiles()
        .OrderBy(f => f.Name, StringComparer.Ordinal).Select(f => $"{f.Name}:{f.Length}:{f.LastWriteTimeUtc.Ticks}"));

    /// <summary>Loads a model that must be a <typeparamref name="TModel"/> (say, <see cref="CausalLanguageModel"/> for serving text).</summary>
    public static TModel Load<TModel>(string folder, BasePrecision? precision = null) where TModel : nn.Module
    {
        var config = ModelConfig.Load(Path.Combine(folder, ConfigFile));
        if (!typeof(TModel).IsAssignableFrom(config.ModelClass))
            throw new InvalidDataException($"the folder holds a {config.ModelType} model ({config.Architecture}), not a {typeof(TModel).Name}");
        return (TModel)(nn.Module)Load(folder, precision);
    }

    /// <summary>
    /// Writes config.json and the weights in Hugging Face layout (keys, [in, out] Conv1D weights, tied heads left out), every
    /// tensor in the type of the model's weight matrices, which config.json's torch_dtype then names (so a base loaded
    /// <see cref="BasePrecision.AsStored"/> from bf16, an adapter merged into it, saves bf16 again, norms included). With <paramref name="maxShardBytes"/>, weights over that size go to model-0000i-of-0000n.safetensors shards plus the index.
    /// </summary>
    public static void Save(nn.Module model, string folder, long? maxShardBytes = null)
    {
        var pretrained = model as IHuggingFaceModel ?? throw new ArgumentException($"{model.GetType().Name} has no Hugging Face layout", nameof(model));
        using var scope = NewDisposeScope();
        Directory.CreateDirectory(folder);
        var type = MatrixType(model);
        var tensors = pretrained.CheckpointTensors()
            .Select(t => (t.Key, Tensor: t.Transposed ? t.Parameter.detach().t() : t.Parameter.detach()))
            .Select(t => (t.Key, Tensor: t.Tensor.dtype != type ? t.Tensor.to_type(type) : t.Tensor))
            .OrderBy(t => t.Key, StringComparer.Ordinal).ToList();
        var metadata = new Dictionary<string, string> { ["format"] = "pt" };
        long total = tensors.Sum(t => t.Tensor.NumberOfElements * t.Tensor.ElementSize);
        // Weights of an earlier save, single or sharded, must not be left beside the new ones.
        foreach (string stale in Directory.EnumerateFiles(folder, "model-*-of-*.safetensors").Append(Path.Combine(folder, IndexFile)).ToList())
            File.Delete(stale);
        if (maxShardBytes is not { } limit || total <= limit)
        {
            SafeTensors.Save(Path.Combine(folder, WeightsFile), tensors.ToDictionary(t => t.Key, t => t.Tensor), metadata);
        }
        else
        {
            var shards = new List<List<(string Key, Tensor Tensor)>> { new() };
            long size = 0;
            foreach (var t in tensors)
            {
                long bytes = t.Tensor.NumberOfElements * t.Tensor.ElementSize;
                if (size > 0 && size + bytes > limit)
                {
                    shards.Add([]);
                    size = 0;
                }
                shards[^1].Add(t);
                size += bytes;
            }
            var weightMap = new SortedDictionary<string, string>(StringComparer.Ordinal);
            for (int i = 0; i < shards.Count; i++)
            {
                string name = string.Format(CultureInfo.InvariantCulture, "model-{0:D5}-of-{1:D5}.safetensors", i + 1, shards.Count);
                SafeTensors.Save(Path.Combine(folder, name), shards[i].ToDictionary(t => t.Key, t => t.Tensor), metadata);
                foreach (var t in shards[i]) weightMap[t.Key] = name;
            }
            File.WriteAllText(Path.Combine(folder, IndexFile), JsonSerializer.Serialize(
                new { metadata = new { total_size = total }, weight_map = weightMap }, new JsonSerializerOptions { WriteIndented = true }));
            File.Delete(Path.Combine(folder, WeightsFile));
        }
        (pretrained.ModelConfig with { TorchDtype = TorchDtypeName(type) }).Save(Path.Combine(folder, ConfigFile));
    }

    /// <summary>The type of a model's weight matrices (<see cref="IStoredMatrix"/>): float32 where they are of several types or there are none.</summary>
    public static ScalarType MatrixType(nn.Module model) =>
        BasePrecision.Matrices(model).Select(m => m.Matrix.dtype).Distinct().ToList() is [var only] ? only : ScalarType.Float32;

    /// <summary>The config.json torch_dtype of a type.</summary>
    static string TorchDtypeName(ScalarType type) => type switch
    {
        ScalarType.Float32 => "float32", ScalarType.BFloat16 => "bfloat16", ScalarType.Float16 => "float16",
        _ => throw new ArgumentException($"weights of type {type} cannot be saved"),
    };

    /// <summary>
    /// Checks every file's header and the whole key set before reading any data: a tensor missing, unexpected (other than
    /// the buffers <see cref="IHuggingFaceModel.CanonicalKey"/> skips), stored twice, of the wrong shape or of a dtype that
    /// cannot be read is refused naming the file (its name in the folder, never a path) and the tensor. Then reads one
    /// tensor at a time: a weight matrix (<see cref="IStoredMatrix"/>) in <paramref name="precision"/>'s type, mapped from
    /// the file when stored in it (read and converted once otherwise); every other tensor copied into its float32 parameter.
    /// </summary>
    static void LoadWeights(IHuggingFaceModel model, nn.Module module, string folder, BasePrecision precision)
    {
        // By module path: a weight the checkpoint names once may be held by two modules (a head tied to the embeddings).
        var matrices = module.named_modules().Where(m => m.module is IStoredMatrix)
            .ToDictionary(m => m.name + ".weight", m => (IStoredMatrix)m.module, StringComparer.Ordinal);
        var expected = model.CheckpointTensors().ToDictionary(t => t.Key, StringComparer.Ordinal);
        var files = OpenCheckpoint(folder);
        try
        {
            var found = new Dictionary<string, (SafeTensorsFile File, SafeTensorInfo Info)>(StringComparer.Ordinal);
            var unexpected = new List<(string File, string Tensor)>();
            foreach (var file in files)
                foreach (var info in file.Tensors)
                {
                    if (model.CanonicalKey(info.Name) is not { } key) continue;
                    string name = Path.GetFileName(file.Path);
                    if (!expected.TryGetValue(key, out var target)) { unexpected.Add((name, info.Name)); continue; }
                    if (!found.TryAdd(key, (file, info)))
                        throw new InvalidDataException($"{name}: tensor {info.Name} is stored twice (also in {Path.GetFileName(found[key].File.Path)})");
                    long[] shape = target.Transposed ? [.. target.Parameter.shape.Reverse()] : target.Parameter.shape;
                    if (!info.Shape.SequenceEqual(shape))
                        throw new InvalidDataException(
                            $"{name}: tensor {info.Name} has shape [{string.Join(",", info.Shape)}]; config.json makes it [{string.Join(",", shape)}]");
                    if (!SafeTensors.CanLoad(info.DType))
                        throw new InvalidDataException($"{name}: tensor {info.Name} has dtype {info.DType}, which cannot be loaded ({SafeTensors.LoadableDTypes} can)");
                }
            // Named per file, the first file's first: with shards, where the stray tensors are is half the diagnosis.
            if (unexpected.GroupBy(u => u.File).FirstOrDefault() is { } stray)
                throw new InvalidDataException($"{stray.Key}: {stray.Count()} tensor(s) this {model.ModelConfig.Architecture} does not have: {Names([.. stray.Select(u => u.Tensor)])}"
                    + (unexpected.Count > stray.Count() ? $" ({unexpected.Count - stray.Count()} more in other shards)" : ""));
            if (expected.Keys.Where(k => !found.ContainsKey(k)).ToList() is { Count: > 0 } missing)
                throw new InvalidDataException($"{(files.Count == 1 ? Path.GetFileName(files[0].Path) : IndexFile)}: {missing.Count} tensor(s) missing: {Names(missing)}");

            using var noGrad = no_grad();
            foreach (var (key, (file, info)) in found.OrderBy(f => f.Value.File.Path, StringComparer.Ordinal).ThenBy(f => f.Value.Info.Begin))
            {
                var target = expected[key];
                if (matrices.TryGetValue(key, out var owner) && SafeTensorsFile.TypeOf(info) is { } storedType)
                {
                    var type = precision.MatrixTypeFor(storedType);
                    var data = type == storedType && !target.Transposed ? file.Map(info) : null;
                    if (data is null)
                    {
                        using var scope = NewDisposeScope();
                        var stored = file.Read(info);
                        data = (target.Transposed ? stored.t() : stored).to_type(type).contiguous().MoveToOuterDisposeScope();
                    }
                    BasePrecision.Replace(matrices.Values, owner.Matrix, new Parameter(data, requires_grad: false));
                }
                else
                {
                    using var scope = NewDisposeScope();
                    var stored = file.Read(info);
                    target.Parameter.copy_(target.Transposed ? stored.t() : stored);
                }
            }
        }
        finally
        {
            foreach (var file in files) file.Dispose();
        }
    }

    /// <summary>
    /// Before the model is built: a config.json whose linear layers alone need more values than the weight files hold (all
    /// of them, plus the largest once more for a tied head they leave out) is refused, so a wrong or hostile size
    /// (<c>hidden_size</c> of a million) is an error naming the file, not an allocation that fails or exhausts memory.
    /// The sum stops once past the files' size, so a huge <c>num_hidden_layers</c> costs no more than the files do.
    /// </summary>
    static void CheckSize(ModelConfig config, string folder)
    {
        var files = OpenCheckpoint(folder);
        long stored = 0, largest = 0;
        try
        {
            foreach (var info in files.SelectMany(f => f.Tensors))
            {
                long count = info.Shape.Aggregate(1L, (n, d) => n * d);   // cannot overflow: the header check bounded its bytes
                stored += count;
                largest = Math.Max(largest, count);
            }
        }
        finally
        {
            foreach (var file in files) file.Dispose();
        }
        long limit = stored + largest, described = 0;
        foreach (var (path, inFeatures, outFeatures) in config.LinearShapes())
        {
            // A size past int.MaxValue wraps in the family's int arithmetic; each factor at most that, the product fits a long.
            if (inFeatures <= 0 || outFeatures <= 0 || inFeatures > int.MaxValue || outFeatures > int.MaxValue)
                throw new InvalidDataException($"{ConfigFile}: its sizes give {path} the shape [{outFeatures},{inFeatures}]");
            described += inFeatures * outFeatures;
            if (described > limit)
                throw new InvalidDataException($"{ConfigFile}: its sizes give the linear layers up to {path} more values than the weight files hold ({stored} in all); the config does not describe these weights");
        }
    }

    /// <summary>The single weights file, or every shard the index names, each with a validated header.</summary>
    static List<SafeTensorsFile> OpenCheckpoint(string folder)
    {
        string single = Path.Combine(folder, WeightsFile), index = Path.Combine(folder, IndexFile);
        if (File.Exists(single)) return [SafeTensorsFile.Open(single)];
        if (!File.Exists(index)) throw new InvalidDataException($"the folder has neither {WeightsFile} nor {IndexFile}");

        var weightMap = ReadWeightMap(index);
        var files = new List<SafeTensorsFile>();
        try
        {
            var shards = weightMap.Values.Distinct(StringComparer.Ordinal).Order(StringComparer.Ordinal).ToList();
            if (shards.FirstOrDefault(shard => !File.Exists(Path.Combine(folder, shard))) is { } absentShard)
                throw new InvalidDataException($"{IndexFile}: shard {absentShard} (holding {weightMap.First(kv => kv.Value == absentShard).Key}) is not in the folder");
            foreach (string shard in shards)
            {
                string path = Path.Combine(folder, shard);
                var file = SafeTensorsFile.Open(path);
                files.Add(file);
                var stored = file.Tensors.Select(t => t.Name).ToHashSet(StringComparer.Ordinal);
                var listed = weightMap.Where(kv => kv.Value == shard).Select(kv => kv.Key).ToList();
                if (listed.Where(k => !stored.Contains(k)).ToList() is { Count: > 0 } absent)
                    throw new InvalidDataException($"{IndexFile}: weight_map puts {Names(absent)} in {shard}, which does not hold them");
                if (stored.Where(k => weightMap.GetValueOrDefault(k) != shard).ToList() is { Count: > 0 } unlisted)
                    throw new InvalidDataException($"{shard}: holds {Names(unlisted)}, which weight_map does not list in this shard");
            }
            return files;
        }
        catch
        {
            foreach (var file in files) file.Dispose();
            throw;
        }
    }

    static Dictionary<string, string> ReadWeightMap(string index)
    {
        JsonDocument doc;
        try { doc = JsonDocument.Parse(File.ReadAllText(index)); }
        catch (JsonException e) { throw new InvalidDataException($"{IndexFile}: not valid JSON: {e.Message}", e); }
        using (doc)
        {
            if (doc.RootElement.ValueKind != JsonValueKind.Object
                || !doc.RootElement.TryGetProperty("weight_map", out var map) || map.ValueKind != JsonValueKind.Object)
                throw new InvalidDataException($"{IndexFile}: weight_map is missing or not a JSON object");
            var weightMap = new Dictionary<string, string>(StringComparer.Ordinal);
            // JSON may escape half a surrogate pair ("\ud800"): it parses, but reading it as a .NET string throws (fuzzing found
            // this as a 500 from the base-model import).
            try
            {
                foreach (var entry in map.EnumerateObject())
                {
                    if (entry.Value.ValueKind != JsonValueKind.String)
                        throw new InvalidDataException($"{IndexFile}: weight_map entry for {entry.Name} is not a file name string");
                    string shard = entry.Value.GetString()!;
                    // Only plain file names inside the folder: an index must not point the loader anywhere else.
                    if (shard.Length == 0 || shard != Path.GetFileName(shard) || shard is "." or ".." || shard.Contains('\\')
                        || !shard.EndsWith(".safetensors", StringComparison.Ordinal))
                        throw new InvalidDataException($"{IndexFile}: weight_map puts {entry.Name} in '{shard}', which is not a .safetensors file name in the folder");
                    if (!weightMap.TryAdd(entry.Name, shard)) throw new InvalidDataException($"{IndexFile}: weight_map lists {entry.Name} twice");
                }
            }
            catch (InvalidOperationException e)
            {
                throw new InvalidDataException($"{IndexFile}: weight_map holds a name that is not valid Unicode text (an unpaired surrogate escape)", e);
            }
            if (weightMap.Count == 0) throw new InvalidDataException($"{IndexFile}: weight_map is empty");
            return weightMap;
        }
    }

    /// <summary>Up to ten names, then how many more: errors stay readable for checkpoints with thousands of tensors.</summary>
    static string Names(IReadOnlyCollection<string> names) =>
        string.Join(", ", names.Take(10)) + (names.Count > 10 ? $" and {names.Count - 10} more" : "");
}
