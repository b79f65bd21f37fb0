using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>A MixLoRA adapter: a <see cref="MixLoraBlock"/> in every feed-forward network of the model, plus plain LoRA on <c>target_modules</c>.</summary>
public sealed class MixLoraAdapter : TrainableAdapter<MixLoraConfig>
{
    MixLoraAdapter(MixLoraConfig config, Dictionary<string, nn.Module> layers) : base(config, layers) { }

    /// <summary>
    /// Why MixLoRA does not apply to a base, or null: it turns a dense feed-forward network into a mixture of LoRA experts,
    /// and a mixture-of-experts base's feed-forward networks are already mixtures with a frozen router of their own.
    /// </summary>
    public static string? Unsupported(ModelConfig baseModel) => baseModel is Qwen3MoeConfig
        ? $"MixLoRA adds LoRA experts to dense feed-forward networks; model_type '{baseModel.ModelType}' is a mixture of experts already. " +
          "Use lora, dora, lily or rlrr: their target_modules (gate_proj, up_proj, down_proj) reach every expert"
        : null;

    public static MixLoraAdapter Create(nn.Module model, MixLoraConfig config, Generator? init)
    {
        if (model is IHuggingFaceModel { ModelConfig: var baseModel } && Unsupported(baseModel) is { } refusal) throw new ArgumentException(refusal);
        var blocks = model.FeedForwardBlocks().ToList();
        if (blocks.Count == 0) throw new ArgumentException("MixLoRA needs a model with feed-forward networks");
        var layers = blocks.ToDictionary(b => b.Path, b => (nn.Module)new MixLoraBlock(b.Block, config, init));
        var insideBlocks = blocks.SelectMany(b => b.Block.Projections.Select(p => $"{b.Path}.{p.Name}")).ToHashSet();
        // Layers inside the feed-forward networks are the experts' already (a name such as GPT-2's c_proj or ViT's dense
        // also names one there): target_modules adds plain LoRA to the others only.
        if (config.TargetModules.Count > 0)
            foreach (var t in TargetModules.Find(model, config.TargetModules).Where(t => !insideBlocks.Contains(t.Path)))
                layers[t.Path] = new LoraLayer(t.Layer.InFeatures, t.Layer.OutFeatures, config.Lora, init);
        return new(config, layers);
    }

    public override void Attach(nn.Module model)
    {
        var blocks = model.FeedForwardBlocks().ToDictionary(b => b.Path, b => b.Block);
        var linears = model.LinearLayers().ToDictionary(l => l.Path, l => l.Layer);
        foreach (var (path, layer) in layers)
            if (layer is MixLoraBlock block) blocks[path].Adapter = block;
            else linears[path].Adapter = (ILinearAdapter)layer;
    }

    public override IEnumerable<(string Key, Parameter Value)> NamedParameters()
    {
        foreach (var (path, layer) in layers)
            if (layer is MixLoraBlock block)
                foreach (var p in block.NamedParameters(path)) yield return p;
            else
                foreach (var (key, value) in ((LoraLayer)layer).SavedParameters()) yield return ($"{path}.{key}", value);
    }

    public override Tensor? AuxiliaryLoss()
    {
        var losses = layers.Values.OfType<MixLoraBlock>().Select(b => b.AuxiliaryLoss).OfType<Tensor>().ToList();
        return losses.Count == 0 ? null : stack(losses).sum();
    }

    /// <summary>Each block's expert load in the last step (share of routed token slots per expert).</summary>
    public override object? Statistics() => new Dictionary<string, object>
    {
        ["mixlora_expert_load"] = layers.Where(l => l.Value is MixLoraBlock { LastLoad: not null }).ToDictionary(
            l => l.Key, l => ((MixLoraBlock)l.Value).LastLoad!.data<float>().Select(w => Math.Round(w, 4)).ToArray()),
    };

    /// <summary>Reads the blocks' routers and experts as served (and the attention LoRA, as LoRA).</summary>
    public static (Dictionary<string, ServedMixLora> Blocks, Dictionary<string, LoraWeights> Lora) LoadServed(
        MixLoraConfig config, Dictionary<string, Tensor> tensors, IReadOnlyDictionary<string, (long In, long Out)> layers)
    {
        var blocks = new Dictionary<string, ServedMixLora>();
        foreach (var (key, router) in tensors)
        {
            if (!key.EndsWith(".mixlora_router.weight", StringComparison.Ordinal)) continue;
            string path = key[..^".mixlora_router.weight".Length];
            // The block's projections: what expert 0 has LoRA pairs for, each a linear layer of the model under the block.
            string prefix0 = $"{path}.experts.0.";
            var names = tensors.Keys.Where(k => k.StartsWith(prefix0, StringComparison.Ordinal) && k.EndsWith(".lora_A.weight", StringComparison.Ordinal))
                .Select(k => k[prefix0.Length..^".lora_A.weight".Length]).ToList();
            if (names.Count == 0) throw new InvalidDataException($"{key}: its experts are missing");
            var shapes = names.ToDictionary(n => n, n => layers.TryGetValue($"{path}.{n}", out var l) ? l
                : throw new InvalidDataException($"{key}: the base model has no layer {path}.{n} for its experts"));
            // The router reads the block's input, whose size is one of its projections' inputs and its output's size.
            if (router.ndim != 2 || router.shape[0] != config.NumExperts
                || !shapes.Values.Any(s => s.In == router.shape[1]) || !shapes.Values.Any(s => s.Out == router.shape[1]))
                throw new InvalidDataException($"{key}: shape [{string.Join(",", router.shape)}] does not fit {config.NumExperts} experts over the block's input");
            var experts = new List<IReadOnlyDictionary<string, LoraWeights>>();
            for (int e = 0; e < config.NumExperts; e++)
            {
                var pairs = new Dictionary<string, LoraWeights>();
                foreach (var (name, (inFeatures, outFeatures)) in shapes)
                {
                    string prefix = $"{path}.experts.{e}.{name}";
                    var a = tensors.GetValueOrDefault($"{prefix}.lora_A.weight") ?? throw new InvalidDataException($"{prefix}.lora_A.weight is missing");
                    var b = tensors.GetValueOrDefault($"{prefix}.lora_B.weight") ?? throw new InvalidDataException($"{prefix}.lora_B.weight is missing");
                    if (a.ndim != 2 || b.ndim != 2 || a.shape[0] != config.Rank || b.shape[1] != config.Rank || a.shape[1] != inFeatures || b.shape[0] != outFeatures)
                        throw new InvalidDataException($"{prefix}: shapes A [{string.Join(",", a.shape)}] B [{string.Join(",", b.shape)}] do not fit {inFeatures} → {outFeatures} at r = {config.Rank}");
                    pairs[name] = new LoraWeights(a, b, config.Scaling);
                }
                experts.Add(pairs);
            }
            blocks[path] = new ServedMixLora(router, experts, config.TopK);
        }
        if (blocks.Count == 0) throw new InvalidDataException($"{WeightsFileName} holds no MixLoRA blocks");
        var attention = tensors.Where(t => !t.Key.Contains(".experts.", StringComparison.Ordinal)).ToDictionary();
        var lora = attention.Keys.Any(k => k.EndsWith(".lora_A.weight", StringComparison.Ordinal))
            ? LoraAdapter.LoadServed(config.Lora, attention, layers) : [];
        return (blocks, lora);
    }
}
