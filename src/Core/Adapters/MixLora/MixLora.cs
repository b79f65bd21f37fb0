using AdapterService.Core.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Adapters;

/// <summary>
/// MixLoRA (MixLoRA: Enhancing Large Language Models Fine-Tuning with LoRA based Mixture of Experts,
/// https://arxiv.org/abs/2404.15159): inside each frozen feed-forward network, N experts that are the
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
                FeedForwards.Frozen(layer, input) + Lora.Delta(dropout(input), expert[name]));
            output = output.index_add(0, tokens, outputs * w, 1);                            // [T, hidden]
        }
        return output.view(shape);
    }

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
                foreach (var (key, value) in lora.SavedParameters()) yield return ($"{path}.experts.{e}.{name}.{key}", value);
            }
    }

    public override void train(bool on = true)
    {
        base.train(on);
        foreach (var e in experts)
            foreach (var lora in e) lora.DropoutGenerator = DropoutGenerator;
    }
}

/// <summary>A MixLoRA block as served: plain tensors, applied to the rows that use its adapter.</summary>
public sealed class ServedMixLora(Tensor router, IReadOnlyList<IReadOnlyDictionary<string, LoraWeights>> experts, int topK) : IRowBlock
{
    public Tensor Forward(Tensor x, IFeedForward block) => MixLora.Forward(x, block, router, experts, topK, t => t, out _, out _);

    public IEnumerable<Tensor> Tensors => experts.SelectMany(e => e.Values).SelectMany(w => new[] { w.A, w.B }).Prepend(router);

    public long Bytes => Tensors.Sum(t => t.numel() * 4);

    public void Dispose() { foreach (var t in Tensors) t.Dispose(); }
}
