using System.Text.Json.Serialization;
using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>MixLoRA's options (our own format: <c>peft_type: MIXLORA</c>); <c>target_modules</c> are the attention layers that get plain LoRA.</summary>
public sealed record MixLoraConfig : AdapterConfig
{
    public const string Type = "MIXLORA";
    public override string PeftType { get; init; } = Type;
    [JsonPropertyName("r")] public int Rank { get; init; } = 8;
    [JsonPropertyName("lora_alpha")] public double Alpha { get; init; } = 16;
    [JsonPropertyName("lora_dropout")] public double Dropout { get; init; }
    [JsonPropertyName("num_experts")] public int NumExperts { get; init; } = 8;
    [JsonPropertyName("top_k")] public int TopK { get; init; } = 2;
    [JsonPropertyName("router_aux_loss_coef")] public double AuxLossCoefficient { get; init; } = 0.01;
    [JsonPropertyName("router_init_range")] public double RouterInitRange { get; init; } = 0.02;

    public override string Method => "mixlora";
    [JsonIgnore] public double Scaling => Alpha / Rank;
    [JsonIgnore] public LoraConfig Lora => new() { Rank = Rank, Alpha = Alpha, Dropout = Dropout, TargetModules = TargetModules };

    public override void Validate()
    {
        if (Rank is < 1 or > 1024) throw new ArgumentException("r must be between 1 and 1024");
        if (!(Alpha > 0)) throw new ArgumentException("lora_alpha must be positive");
        if (Dropout is < 0 or >= 1) throw new ArgumentException("lora_dropout must be in [0, 1)");
        if (NumExperts is < 1 or > 64) throw new ArgumentException("num_experts must be between 1 and 64");
        if (TopK < 1 || TopK > NumExperts) throw new ArgumentException("top_k must be between 1 and num_experts");
        if (AuxLossCoefficient is < 0 or > 10) throw new ArgumentException("router_aux_loss_coef must be between 0 and 10");
    }
}

/// <summary>
/// MixLoRA (paper 002's abstract; the MixLoRA design): inside each frozen feed-forward network, N experts that are the
/// network itself plus their own LoRA pairs on its projections (Llama's gate, up, down; GPT-2's c_fc, c_proj; ViT's
/// intermediate and output dense); a top-k router (no bias) picks k experts per token and mixes them with its softmax
/// weights renormalised over the k:
/// FFN(h) = Σ_{e ∈ topk} wₑ · FFNₑ(h), FFNₑ the network with every projection W + s Bₑ Aₑ.
/// Each expert runs the network on the tokens routed to it (k passes over the tokens in all). With every B zero the
/// block equals the base (the weights sum to 1). The auxiliary load-balance loss is Mixtral's/Switch's:
/// coef · N · Σₑ fₑ · Pₑ, fₑ the share of routed token slots that went to e, Pₑ the mean router probability of e.
/// </summary>
public static class MixLora
{
    /// <param name="x">Block inputs [.., hidden].</param>
    /// <param name="block">The frozen network (its weights are read directly, bypassing any slot).</param>
    /// <param name="router">[N, hidden].</param>
    /// <param name="experts">N experts' LoRA pairs by projection name.</param>
    /// <param name="topK">k.</param>
    /// <param name="dropout">Applied to each LoRA path's input.</param>
    /// <param name="probabilities">Router softmax [tokens, N], for the load-balance loss.</param>
    /// <param name="chosen">The k experts per token [tokens, k].</param>
    public static Tensor Forward(Tensor x, IFeedForward block, Tensor router, IReadOnlyList<IReadOnlyDictionary<string, LoraWeights>> experts, int topK,
        Func<Tensor, Tensor> dropout, out Tensor probabilities, out Tensor chosen)
    {
        var shape = x.shape;
        var h = x.reshape(-1, shape[^1]);                                                     // [T, hidden]
        probabilities = nn.functional.softmax(h.matmul(router.t()), -1);                     // [T, N]
        var (top, index) = probabilities.topk(topK, -1);                                     // [T, k] each
        var weights = top / top.sum(-1, keepdim: true);                                      // renormalised over the k
        chosen = index;
        var output = zeros_like(h);                                                          // [T, hidden]
        var hits = index.cpu().data<long>().ToArray();
        for (int e = 0; e < experts.Count; e++)
        {
            var positions = Enumerable.Range(0, hits.Length).Where(i => hits[i] == e).ToArray();
            if (positions.Length == 0) continue;
            var slot = tensor(positions.Select(i => (long)i).ToArray());                     // flat [T·k] positions
            var tokens = slot.div(topK, rounding_mode: RoundingMode.floor);                  // [n_e]
            var w = weights.view(-1).index_select(0, slot).unsqueeze(1);                     // [n_e, 1]
            var expert = experts[e];
            var outputs = block.Compute(h.index_select(0, tokens), (name, layer, input) =>   // (W + s Bₑ Aₑ) input
                FeedForwards.Frozen(layer, input) + Delta(dropout(input), expert[name]));
            output = output.index_add(0, tokens, outputs * w, 1);                            // [T, hidden]
        }
        return output.view(shape);
    }

    static Tensor Delta(Tensor x, LoraWeights w) => x.matmul(w.A.t()).matmul(w.B.t()) * w.Scaling;

    /// <summary>coef · N · Σₑ fₑ Pₑ (Mixtral's load-balancing loss).</summary>
    public static Tensor LoadBalanceLoss(Tensor probabilities, Tensor chosen, int experts, double coefficient)
    {
        var dispatched = nn.functional.one_hot(chosen, experts).to_type(ScalarType.Float32).mean([0]);   // fₑ per choice [k, N]
        return (dispatched * probabilities.mean([0]).unsqueeze(0)).sum() * experts * coefficient;
    }

    /// <summary>Share of routed token slots per expert [N].</summary>
    public static Tensor Load(Tensor chosen, int experts) =>
        nn.functional.one_hot(chosen.view(-1), experts).to_type(ScalarType.Float32).mean([0]);
}

/// <summary>MixLoRA in one feed-forward block: the router and the experts' LoRA layers (keys <c>experts.{e}.{projection}.lora_A.weight</c> …).</summary>
public sealed class MixLoraBlock : nn.Module<Tensor, Tensor>, IFeedForwardAdapter, IDropoutLayer
{
    public readonly Linear mixlora_router;
    /// <summary>Per expert, one LoRA layer per projection of the block, in <see cref="Projections"/> order.</summary>
    public readonly ModuleList<ModuleList<LoraLayer>> experts;
    readonly MixLoraConfig config;

    /// <summary>The block's projection names (<c>gate_proj</c> …, or ViT's <c>intermediate.dense</c> …).</summary>
    public IReadOnlyList<string> Projections { get; }

    public Generator? DropoutGenerator { get; set; }
    /// <summary>This block's share of the last training forward's load-balance loss.</summary>
    public Tensor? AuxiliaryLoss { get; private set; }
    /// <summary>Share of routed token slots per expert in the last forward [N].</summary>
    public Tensor? LastLoad { get; private set; }

    public MixLoraBlock(IFeedForward block, MixLoraConfig config, Generator? init) : base(nameof(MixLoraBlock))
    {
        this.config = config;
        Projections = block.Projections.Select(p => p.Name).ToList();
        mixlora_router = nn.Linear(block.Projections[0].Layer.InFeatures, config.NumExperts, hasBias: false);
        using (no_grad()) mixlora_router.weight!.normal_(0, config.RouterInitRange, init);
        experts = new ModuleList<ModuleList<LoraLayer>>(Enumerable.Range(0, config.NumExperts).Select(_ => new ModuleList<LoraLayer>(
            block.Projections.Select(p => new LoraLayer(p.Layer.InFeatures, p.Layer.OutFeatures, config.Lora, init)).ToArray())).ToArray());
        RegisterComponents();
        eval();
    }

    /// <summary>Expert <paramref name="e"/>'s LoRA layer on projection <paramref name="name"/>.</summary>
    public LoraLayer Expert(int e, string name) => experts[e][Projections.ToList().IndexOf(name)];

    public override Tensor forward(Tensor x) => throw new NotSupportedException("MixLoRA replaces a feed-forward block: call Forward(x, mlp)");

    public Tensor Forward(Tensor x, IFeedForward block)
    {
        var weights = experts.Select(e => (IReadOnlyDictionary<string, LoraWeights>)Projections.Zip(e).ToDictionary(p => p.First, p => p.Second.Weights())).ToList();
        var output = MixLora.Forward(x, block, mixlora_router.weight!, weights, config.TopK,
            t => SeededDropout.Apply(t, config.Dropout, training, DropoutGenerator), out var probabilities, out var chosen);
        LastLoad?.Dispose();
        LastLoad = MixLora.Load(chosen, config.NumExperts).DetachFromDisposeScope();
        AuxiliaryLoss = training ? MixLora.LoadBalanceLoss(probabilities, chosen, config.NumExperts, config.AuxLossCoefficient) : null;
        return output;
    }

    public IEnumerable<(string Key, Parameter Value)> NamedParameters(string path)
    {
        yield return ($"{path}.mixlora_router.weight", mixlora_router.weight!);
        for (int e = 0; e < experts.Count; e++)
            foreach (var (name, lora) in Projections.Zip(experts[e]))
            {
                yield return ($"{path}.experts.{e}.{name}.lora_A.weight", lora.lora_A.weight!);
                yield return ($"{path}.experts.{e}.{name}.lora_B.weight", lora.lora_B.weight!);
            }
    }

    public override void train(bool on = true)
    {
        base.train(on);
        foreach (var e in experts)
            foreach (var lora in e) lora.DropoutGenerator = DropoutGenerator;
    }
}

/// <summary>A MixLoRA adapter: a <see cref="MixLoraBlock"/> in every feed-forward network of the model, plus plain LoRA on <c>target_modules</c>.</summary>
public sealed class MixLoraAdapter : TrainableAdapter
{
    readonly MixLoraConfig config;
    readonly Dictionary<string, nn.Module> layers;

    MixLoraAdapter(MixLoraConfig config, Dictionary<string, nn.Module> layers) => (this.config, this.layers) = (config, layers);

    public override AdapterConfig Config => config;
    public override IReadOnlyDictionary<string, nn.Module> Layers => layers;
    /// <summary>No: its load-balance loss spans the batch.</summary>
    public override bool TokenWise => false;

    public static MixLoraAdapter Create(nn.Module model, MixLoraConfig config, Generator? init)
    {
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
            {
                var lora = (LoraLayer)layer;
                yield return ($"{path}.lora_A.weight", lora.lora_A.weight!);
                yield return ($"{path}.lora_B.weight", lora.lora_B.weight!);
            }
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

/// <summary>A MixLoRA block as served: plain tensors, applied to the rows that use its adapter.</summary>
public sealed class ServedMixLora(Tensor router, IReadOnlyList<IReadOnlyDictionary<string, LoraWeights>> experts, int topK) : IDisposable
{
    public Tensor Forward(Tensor x, IFeedForward block) => MixLora.Forward(x, block, router, experts, topK, t => t, out _, out _);

    public IEnumerable<Tensor> Tensors => experts.SelectMany(e => e.Values).SelectMany(w => new[] { w.A, w.B }).Prepend(router);

    public long Bytes => Tensors.Sum(t => t.numel() * 4);

    public void Dispose() { foreach (var t in Tensors) t.Dispose(); }
}
