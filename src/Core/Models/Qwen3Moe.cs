using System.Text.Json;
using System.Text.Json.Serialization;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// Qwen3 MoE (transformers' modeling_qwen3_moe.py; Qwen3-30B-A3B, Qwen3-235B-A22B): Qwen3's attention (q/k norms) with a
/// sparse mixture-of-experts feed-forward network on every <c>decoder_sparse_step</c>-th layer not in <c>mlp_only_layers</c>
/// (the others keep a dense SwiGLU of <c>intermediate_size</c>). Each expert is a SwiGLU of <c>moe_intermediate_size</c>
/// under <c>mlp.experts.{e}</c>, so an adapter whose target_modules name <c>gate_proj</c> adapts every expert's, as PEFT does.
/// The weights are read in the per-expert layout the released checkpoints use; transformers 5.x's fused 3D experts
/// (<c>mlp.experts.gate_up_proj</c>, <c>mlp.experts.down_proj</c>) are refused by name.
/// </summary>
public sealed class Qwen3MoeForCausalLM(Qwen3MoeConfig config) : LlamaForCausalLM(config)
{
    public override string? CanonicalKey(string key) =>
        key.Contains(".mlp.experts.", StringComparison.Ordinal) && (key.EndsWith(".experts.gate_up_proj", StringComparison.Ordinal) || key.EndsWith(".experts.down_proj", StringComparison.Ordinal))
            ? throw new InvalidDataException($"{key}: the experts are stored fused as one 3D tensor (transformers 5.x's layout); this service reads the per-expert layout " +
                "of the released checkpoints (mlp.experts.{e}.gate_proj / up_proj / down_proj): save the model with transformers 4.x or use the original checkpoint")
            : base.CanonicalKey(key);

    /// <summary>Each linear layer's path with its input and output sizes, from the config alone.</summary>
    public static IEnumerable<(string Path, long In, long Out)> LinearShapes(Qwen3MoeConfig c)
    {
        long hidden = c.HiddenSize, q = c.NumAttentionHeads * c.HeadDim, kv = c.KeyValueHeads * c.HeadDim;
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            yield return ($"model.layers.{i}.self_attn.q_proj", hidden, q);
            yield return ($"model.layers.{i}.self_attn.k_proj", hidden, kv);
            yield return ($"model.layers.{i}.self_attn.v_proj", hidden, kv);
            yield return ($"model.layers.{i}.self_attn.o_proj", q, hidden);
            // The router (mlp.gate) is a plain frozen linear layer, not a target: see Qwen3MoeSparseMoeBlock.
            var (prefixes, ffn) = c.IsSparse(i)
                ? (Enumerable.Range(0, c.NumExperts).Select(e => $"model.layers.{i}.mlp.experts.{e}"), (long)c.MoeIntermediateSize)
                : ([$"model.layers.{i}.mlp"], c.IntermediateSize);
            foreach (string prefix in prefixes)
            {
                yield return ($"{prefix}.gate_proj", hidden, ffn);
                yield return ($"{prefix}.up_proj", hidden, ffn);
                yield return ($"{prefix}.down_proj", ffn, hidden);
            }
        }
        yield return ("lm_head", hidden, c.VocabSize);
    }
}

public sealed record Qwen3MoeConfig : LlamaConfig
{
    public Qwen3MoeConfig()
    {
        ModelType = "qwen3_moe";
        Architectures = [nameof(Qwen3MoeForCausalLM)];
        (RmsNormEps, MaxPositionEmbeddings) = (1e-6, 32768);   // Qwen3MoeConfig's defaults where they differ from Llama's
    }

    [JsonPropertyName("num_experts")] public int NumExperts { get; init; } = 128;
    [JsonPropertyName("num_experts_per_tok")] public int NumExpertsPerTok { get; init; } = 8;
    [JsonPropertyName("moe_intermediate_size")] public int MoeIntermediateSize { get; init; } = 768;
    /// <summary>Whether the top-k routing weights are renormalised to sum to 1 (Qwen3-30B-A3B: true; the class default: false).</summary>
    [JsonPropertyName("norm_topk_prob")] public bool NormTopkProb { get; init; }
    [JsonPropertyName("decoder_sparse_step")] public int DecoderSparseStep { get; init; } = 1;
    [JsonPropertyName("mlp_only_layers")] public int[]? MlpOnlyLayers { get; init; }
    /// <summary>
    /// The router's load-balancing loss (Switch Transformer's) trains the router; the base model, router included, is frozen
    /// here and no adapter method adapts the router, so the loss has nothing to act on: read and written back, not used.
    /// </summary>
    [JsonPropertyName("output_router_logits")] public bool OutputRouterLogits { get; init; }
    [JsonPropertyName("router_aux_loss_coef")] public double RouterAuxLossCoef { get; init; } = 0.001;
    [JsonPropertyName("use_sliding_window")] public bool UseSlidingWindow { get; init; }
    /// <summary>Read only with use_sliding_window, which is refused; kept so a saved config is the one imported.</summary>
    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; init; }
    /// <summary>Qwen2's window layers, read only with use_sliding_window.</summary>
    [JsonPropertyName("max_window_layers")] public int? MaxWindowLayers { get; init; }

    /// <summary>Whether layer <paramref name="layer"/>'s feed-forward network is the mixture of experts (else the dense SwiGLU).</summary>
    public bool IsSparse(int layer) =>
        !(MlpOnlyLayers ?? []).Contains(layer) && NumExperts > 0 && (layer + 1) % DecoderSparseStep == 0;

    [JsonIgnore] public override bool QkNorm => true;
    [JsonIgnore] public override Type ModelClass => typeof(Qwen3MoeForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new Qwen3MoeForCausalLM(this);
    public override nn.Module<Tensor, Tensor> CreateMlp(int layer) => IsSparse(layer) ? new Qwen3MoeSparseMoeBlock(this) : new LlamaMlp(this);
    public override IEnumerable<(string Path, long In, long Out)> LinearShapes() => Qwen3MoeForCausalLM.LinearShapes(this);

    protected override IEnumerable<string> Problems()
    {
        foreach (string problem in base.Problems()) yield return problem;
        if (NumExperts < 0) yield return $"num_experts is {NumExperts}; it must not be negative";
        if (NumExperts > 0 && NumExpertsPerTok is var k && (k < 1 || k > NumExperts))
            yield return $"num_experts_per_tok is {k}; it must be between 1 and num_experts ({NumExperts})";
        if (NumExperts > 0 && MoeIntermediateSize <= 0) yield return $"moe_intermediate_size is {MoeIntermediateSize}; it must be positive";
        if (DecoderSparseStep <= 0) yield return $"decoder_sparse_step is {DecoderSparseStep}; it must be positive";
        if (MlpOnlyLayers?.FirstOrDefault(l => l < 0 || l >= NumHiddenLayers, -1) is { } bad and not -1)
            yield return $"mlp_only_layers lists layer {bad}; the model has layers 0 to {NumHiddenLayers - 1}";
        if (UseSlidingWindow) yield return "use_sliding_window true is not supported (no released Qwen3 MoE config turns it on)";
        if (MlpBias) yield return "mlp_bias true is not supported (Qwen3 MoE's MLP has no bias)";
    }
}

/// <summary>
/// Qwen3 MoE's sparse block: per token, the router's logits g = W_gate x over the experts, p = softmax(g) in float32, the
/// top-k experts by p (k = num_experts_per_tok) with their p renormalised to sum to 1 under norm_topk_prob, and the output
/// Σ_{e in top-k} p_e · expert_e(x), each expert a SwiGLU down(silu(gate(x)) · up(x)).
/// </summary>
/// <remarks>
/// Computed as a loop over the experts, each applied to the whole [b, t, hidden] input and weighted by its per-token
/// routing weight (0 where the token did not choose it). That keeps every expert layer's input shaped like any other
/// linear layer's, rows and positions intact, so each adapter method works on an expert exactly as on a dense layer:
/// per-row adapters in a mixed serving batch, and Lily's per-sequence prefix state, which must see every token of a row.
/// An expert no token of the call chose is skipped when no adapter is on it (its weight is 0 everywhere, so the sum is
/// the same to the bit); one with an adapter always runs, so a stateful adapter sees every token, in prefill and decoding
/// alike. The base is frozen, so the router is a plain linear layer: no adapter reaches it and no load-balancing loss trains it.
/// </remarks>
public sealed class Qwen3MoeSparseMoeBlock : nn.Module<Tensor, Tensor>
{
    public readonly Linear gate;
    public readonly ModuleList<LlamaMlp> experts;
    readonly int topK;
    readonly bool normTopkProb;

    public Qwen3MoeSparseMoeBlock(Qwen3MoeConfig config) : base(nameof(Qwen3MoeSparseMoeBlock))
    {
        gate = nn.Linear(config.HiddenSize, config.NumExperts, hasBias: false);
        experts = new ModuleList<LlamaMlp>(Enumerable.Range(0, config.NumExperts).Select(_ => new LlamaMlp(config, config.MoeIntermediateSize)).ToArray());
        (topK, normTopkProb) = (config.NumExpertsPerTok, config.NormTopkProb);
        RegisterComponents();
    }

    /// <summary>The routing weights [.., num_experts]: each token's top-k probabilities at their experts, 0 elsewhere.</summary>
    public Tensor Routing(Tensor x)
    {
        var probabilities = gate.forward(x).to_type(ScalarType.Float32).softmax(-1);       // [.., E]
        var (top, chosen) = probabilities.topk(topK, dim: -1);                              // [.., k] each
        if (normTopkProb) top = top / top.sum(-1, keepdim: true);
        return zeros_like(probabilities).scatter(-1, chosen, top).to_type(x.dtype);
    }

    public override Tensor forward(Tensor x)
    {
        var routing = Routing(x);                                                           // [b, t, E]
        var chosen = routing.ne(0).flatten(0, -2).any(0).cpu().data<bool>().ToArray();          // per expert: chosen by some token
        Tensor? y = null;
        for (int e = 0; e < experts.Count; e++)
        {
            var expert = experts[e];
            bool adapted = expert.gate_proj.Adapter is not null || expert.up_proj.Adapter is not null || expert.down_proj.Adapter is not null;
            if (!chosen[e] && !adapted) continue;
            var term = routing.narrow(-1, e, 1) * expert.forward(x);                       // [b, t, hidden]
            y = y is null ? term : y + term;
        }
        return y!;   // top-k ≥ 1: some expert is always chosen
    }
}
