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

/// <summary>One expert's LoRA pairs on the block's three projections.</summary>
public sealed record ExpertWeights(LoraWeights Gate, LoraWeights Up, LoraWeights Down);

/// <summary>
/// MixLoRA (paper 002's abstract; the MixLoRA design): inside each frozen SwiGLU feed-forward block, N experts that are
/// the block itself plus their own LoRA pairs on gate, up and down; a top-k router (no bias) picks k experts per token
/// and mixes them with its softmax weights renormalised over the k:
/// FFN(h) = Σ_{e ∈ topk} wₑ · (W_d + s B_dₑ A_dₑ)(silu((W_g + s B_gₑ A_gₑ) h) ⊙ (W_u + s B_uₑ A_uₑ) h).
/// The frozen W_g h and W_u h are computed once for all tokens; only W_d runs per expert, on its tokens. With every
/// B zero the block equals the base (the weights sum to 1). The auxiliary load-balance loss is Mixtral's/Switch's:
/// coef · N · Σₑ fₑ · Pₑ, fₑ the share of routed token slots that went to e, Pₑ the mean router probability of e.
/// </summary>
public static class MixLora
{
    /// <param name="x">Block inputs [.., hidden].</param>
    /// <param name="mlp">The frozen block (its weights are read directly, bypassing any slot).</param>
    /// <param name="router">[N, hidden].</param>
    /// <param name="experts">N experts' LoRA pairs.</param>
    /// <param name="topK">k.</param>
    /// <param name="dropout">Applied to each LoRA path's input.</param>
    /// <param name="probabilities">Router softmax [tokens, N], for the load-balance loss.</param>
    /// <param name="chosen">The k experts per token [tokens, k].</param>
    public static Tensor Forward(Tensor x, LlamaMlp mlp, Tensor router, IReadOnlyList<ExpertWeights> experts, int topK,
        Func<Tensor, Tensor> dropout, out Tensor probabilities, out Tensor chosen)
    {
        var shape = x.shape;
        var h = x.reshape(-1, shape[^1]);                                                     // [T, hidden]
        probabilities = nn.functional.softmax(h.matmul(router.t()), -1);                     // [T, N]
        var (top, index) = probabilities.topk(topK, -1);                                     // [T, k] each
        var weights = top / top.sum(-1, keepdim: true);                                      // renormalised over the k
        chosen = index;
        var gate = nn.functional.linear(h, mlp.gate_proj.weight, mlp.gate_proj.bias);         // W_g h once [T, ffn]
        var up = nn.functional.linear(h, mlp.up_proj.weight, mlp.up_proj.bias);               // W_u h once [T, ffn]
        var output = zeros_like(h);                                                          // [T, hidden]
        var hits = index.cpu().data<long>().ToArray();
        for (int e = 0; e < experts.Count; e++)
        {
            var positions = Enumerable.Range(0, hits.Length).Where(i => hits[i] == e).ToArray();
            if (positions.Length == 0) continue;
            var slot = tensor(positions.Select(i => (long)i).ToArray());                     // flat [T·k] positions
            var tokens = slot.div(topK, rounding_mode: RoundingMode.floor);                  // [n_e]
            var w = weights.view(-1).index_select(0, slot).unsqueeze(1);                     // [n_e, 1]
            var he = h.index_select(0, tokens);                                              // [n_e, hidden]
            var (g, u, d) = (experts[e].Gate, experts[e].Up, experts[e].Down);
            var ge = gate.index_select(0, tokens) + Delta(dropout(he), g);                   // (W_g + s B A) h [n_e, ffn]
            var ue = up.index_select(0, tokens) + Delta(dropout(he), u);                     // (W_u + s B A) h [n_e, ffn]
            var act = nn.functional.silu(ge) * ue;                                           // [n_e, ffn]
            var de = nn.functional.linear(act, mlp.down_proj.weight, mlp.down_proj.bias) + Delta(dropout(act), d);   // [n_e, hidden]
            output = output.index_add(0, tokens, de * w, 1);
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

/// <summary>MixLoRA in one feed-forward block: the router and the experts' LoRA layers (keys <c>experts.{e}.gate_proj.lora_A.weight</c> …).</summary>
public sealed class MixLoraBlock : nn.Module<Tensor, Tensor>, IFeedForwardAdapter, IDropoutLayer
{
    public readonly Linear mixlora_router;
    public readonly ModuleList<ModuleDict<LoraLayer>> experts;
    readonly MixLoraConfig config;
    static readonly string[] Projections = ["gate_proj", "up_proj", "down_proj"];

    public Generator? DropoutGenerator { get; set; }
    /// <summary>This block's share of the last training forward's load-balance loss.</summary>
    public Tensor? AuxiliaryLoss { get; private set; }
    /// <summary>Share of routed token slots per expert in the last forward [N].</summary>
    public Tensor? LastLoad { get; private set; }

    public MixLoraBlock(LlamaMlp mlp, MixLoraConfig config, Generator? init) : base(nameof(MixLoraBlock))
    {
        this.config = config;
        long hidden = mlp.gate_proj.InFeatures, ffn = mlp.gate_proj.OutFeatures;
        mixlora_router = nn.Linear(hidden, config.NumExperts, hasBias: false);
        using (no_grad()) mixlora_router.weight!.normal_(0, config.RouterInitRange, init);
        experts = new ModuleList<ModuleDict<LoraLayer>>(Enumerable.Range(0, config.NumExperts).Select(_ =>
        {
            var dict = new ModuleDict<LoraLayer>();
            dict.Add(("gate_proj", new LoraLayer(hidden, ffn, config.Lora, init)));
            dict.Add(("up_proj", new LoraLayer(hidden, ffn, config.Lora, init)));
            dict.Add(("down_proj", new LoraLayer(ffn, hidden, config.Lora, init)));
            return dict;
        }).ToArray());
        RegisterComponents();
        eval();
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("MixLoRA replaces a feed-forward block: call Forward(x, mlp)");

    public Tensor Forward(Tensor x, LlamaMlp mlp)
    {
        var weights = experts.Select(e => new ExpertWeights(e["gate_proj"].Weights(), e["up_proj"].Weights(), e["down_proj"].Weights())).ToList();
        var output = MixLora.Forward(x, mlp, mixlora_router.weight!, weights, config.TopK,
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
            foreach (var name in Projections)
            {
                yield return ($"{path}.experts.{e}.{name}.lora_A.weight", experts[e][name].lora_A.weight!);
                yield return ($"{path}.experts.{e}.{name}.lora_B.weight", experts[e][name].lora_B.weight!);
            }
    }

    public override void train(bool on = true)
    {
        base.train(on);
        foreach (var e in experts)
            foreach (var name in Projections) e[name].DropoutGenerator = DropoutGenerator;
    }
}

/// <summary>A MixLoRA adapter: a <see cref="MixLoraBlock"/> in every Llama feed-forward block, plus plain LoRA on <c>target_modules</c>.</summary>
public sealed class MixLoraAdapter : TrainableAdapter
{
    readonly MixLoraConfig config;
    readonly Dictionary<string, nn.Module> layers;

    MixLoraAdapter(MixLoraConfig config, Dictionary<string, nn.Module> layers) => (this.config, this.layers) = (config, layers);

    public override AdapterConfig Config => config;
    public override IReadOnlyDictionary<string, nn.Module> Layers => layers;

    public static MixLoraAdapter Create(nn.Module model, MixLoraConfig config, Generator? init)
    {
        var blocks = model.named_modules().Where(m => m.module is LlamaMlp).ToList();
        if (blocks.Count == 0) throw new ArgumentException("MixLoRA needs SwiGLU feed-forward blocks (Llama-family models)");
        var layers = blocks.ToDictionary(b => b.name, b => (nn.Module)new MixLoraBlock((LlamaMlp)b.module, config, init));
        if (config.TargetModules.Count > 0)
            foreach (var t in TargetModules.Find(model, config.TargetModules))
            {
                if (t.Path.Contains(".mlp.", StringComparison.Ordinal))
                    throw new ArgumentException($"target_modules: {t.Path} is inside a feed-forward block, which MixLoRA's experts adapt already");
                layers[t.Path] = new LoraLayer(t.Layer.InFeatures, t.Layer.OutFeatures, config.Lora, init);
            }
        return new(config, layers);
    }

    public override void Attach(nn.Module model)
    {
        var blocks = model.named_modules().Where(m => m.module is LlamaMlp).ToDictionary(m => m.name, m => (LlamaMlp)m.module);
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
            if (!layers.TryGetValue($"{path}.gate_proj", out var gate) || !layers.TryGetValue($"{path}.down_proj", out var down))
                throw new InvalidDataException($"{key}: the base model has no feed-forward block {path}");
            if (router.ndim != 2 || router.shape[0] != config.NumExperts || router.shape[1] != gate.In)
                throw new InvalidDataException($"{key}: shape [{string.Join(",", router.shape)}], expected [{config.NumExperts},{gate.In}]");
            var experts = new List<ExpertWeights>();
            for (int e = 0; e < config.NumExperts; e++)
            {
                LoraWeights Pair(string name, long inFeatures, long outFeatures)
                {
                    string prefix = $"{path}.experts.{e}.{name}";
                    var a = tensors.GetValueOrDefault($"{prefix}.lora_A.weight") ?? throw new InvalidDataException($"{prefix}.lora_A.weight is missing");
                    var b = tensors.GetValueOrDefault($"{prefix}.lora_B.weight") ?? throw new InvalidDataException($"{prefix}.lora_B.weight is missing");
                    if (a.ndim != 2 || b.ndim != 2 || a.shape[0] != config.Rank || b.shape[1] != config.Rank || a.shape[1] != inFeatures || b.shape[0] != outFeatures)
                        throw new InvalidDataException($"{prefix}: shapes A [{string.Join(",", a.shape)}] B [{string.Join(",", b.shape)}] do not fit {inFeatures} → {outFeatures} at r = {config.Rank}");
                    return new LoraWeights(a, b, config.Scaling);
                }
                experts.Add(new ExpertWeights(Pair("gate_proj", gate.In, gate.Out), Pair("up_proj", gate.In, gate.Out), Pair("down_proj", down.In, down.Out)));
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
public sealed class ServedMixLora(Tensor router, IReadOnlyList<ExpertWeights> experts, int topK) : IDisposable
{
    public Tensor Forward(Tensor x, LlamaMlp mlp) => MixLora.Forward(x, mlp, router, experts, topK, t => t, out _, out _);

    public IEnumerable<Tensor> Tensors => experts.SelectMany(e => new[] { e.Gate, e.Up, e.Down }).SelectMany(w => new[] { w.A, w.B }).Prepend(router);

    public long Bytes => Tensors.Sum(t => t.numel() * 4);

    public void Dispose() { foreach (var t in Tensors) t.Dispose(); }
}
