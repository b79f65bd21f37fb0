using System.Text.Json;
using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// Phi-3, Phi-3.5 and Phi-4-mini (transformers' modeling_phi3.py): Llama's decoder with the query, key and value
/// projections fused into one <c>qkv_proj</c> and the gate and up projections into one <c>gate_up_proj</c> (gate rows
/// first), no biases, a <c>partial_rotary_factor</c> (Phi-4-mini rotates 3/4 of each head) and LongRoPE in the
/// long-context models. An adapter on a fused module adapts its whole output, as PEFT does.
/// </summary>
public sealed class Phi3ForCausalLM(Phi3Config config) : LlamaForCausalLM(config)
{
    /// <summary>Each linear layer's path with its input and output sizes, from the config alone.</summary>
    public static IEnumerable<(string Path, long In, long Out)> LinearShapes(Phi3Config c)
    {
        long hidden = c.HiddenSize, q = c.NumAttentionHeads * c.HeadDim, kv = c.KeyValueHeads * c.HeadDim;
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            yield return ($"model.layers.{i}.self_attn.qkv_proj", hidden, q + 2 * kv);
            yield return ($"model.layers.{i}.self_attn.o_proj", q, hidden);
            yield return ($"model.layers.{i}.mlp.gate_up_proj", hidden, 2L * c.IntermediateSize);
            yield return ($"model.layers.{i}.mlp.down_proj", c.IntermediateSize, hidden);
        }
        yield return ("lm_head", hidden, c.VocabSize);
    }
}

public sealed record Phi3Config : LlamaConfig
{
    public Phi3Config()
    {
        ModelType = "phi3";
        Architectures = [nameof(Phi3ForCausalLM)];
    }

    [JsonPropertyName("partial_rotary_factor")] public double PartialRotaryFactor { get; init; } = 1;
    /// <summary>The context LongRoPE's short factors serve (Phi-3's top-level key; max_position_embeddings is the extended one).</summary>
    [JsonPropertyName("original_max_position_embeddings")] public int? OriginalMaxPositionEmbeddings { get; init; }
    /// <summary>Phi-3-mini-4k: 2047; the long-context models: larger than their context.</summary>
    [JsonPropertyName("sliding_window")] public int? SlidingWindow { get; init; }

    [JsonIgnore] public override bool QkvBias => false;
    [JsonIgnore] public override bool OutputBias => false;
    [JsonIgnore] public override int? AttentionWindow => SlidingWindow;
    /// <summary>int(head_dim · partial_rotary_factor), as transformers computes it.</summary>
    [JsonIgnore] public override int RotaryDim => (int)(HeadDim * PartialRotaryFactor);
    [JsonIgnore] public override RopeShape RopeShape => base.RopeShape with { OriginalMaxPositionEmbeddings = OriginalMaxPositionEmbeddings };
    /// <summary>Phi3Config reads an older config's <c>"type": "su"</c> or <c>"yarn"</c> as longrope (the same factor lists).</summary>
    [JsonIgnore] public override RopeScaling? Rope => base.Rope is { RopeType: null, Type: "su" or "yarn" } old ? old with { Type = "longrope" } : base.Rope;
    [JsonIgnore] public override Type ModelClass => typeof(Phi3ForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new Phi3ForCausalLM(this);
    public override DecoderAttention CreateAttention(int layer) => new Phi3Attention(this, layer);
    public override nn.Module<Tensor, Tensor> CreateMlp() => new Phi3Mlp(this);
    public override IEnumerable<(string Path, long In, long Out)> LinearShapes() => Phi3ForCausalLM.LinearShapes(this);

    protected override IEnumerable<string> Problems()
    {
        foreach (string problem in base.Problems()) yield return problem;
        if (PartialRotaryFactor is not (> 0 and <= 1)) yield return $"partial_rotary_factor is {PartialRotaryFactor}; it must be in (0, 1]";
        else if (RotaryDim <= 0 || RotaryDim % 2 != 0) yield return $"partial_rotary_factor {PartialRotaryFactor} gives {RotaryDim} rotary dimensions; they must be positive and even";
        if (OriginalMaxPositionEmbeddings is <= 0) yield return $"original_max_position_embeddings is {OriginalMaxPositionEmbeddings}; it must be positive";
        if (SlidingWindow is <= 0) yield return $"sliding_window is {SlidingWindow}; it must be positive or null";
        // Phi-4-mini writes these false; transformers' Phi3 has no biases at all, so true would be read as false.
        if (AttentionBias) yield return "attention_bias true is not supported (Phi-3 has no attention biases)";
        if (MlpBias) yield return "mlp_bias true is not supported (Phi-3's MLP has no bias)";
        if (OtherKeys?.GetValueOrDefault("lm_head_bias") is { ValueKind: JsonValueKind.True }) yield return "lm_head_bias true is not supported (Phi-3's head has no bias)";
    }
}

/// <summary>Phi-3's attention: one <c>qkv_proj</c> whose output is the queries, then the keys, then the values.</summary>
public sealed class Phi3Attention : DecoderAttention
{
    public readonly AdaptableLinear qkv_proj, o_proj;

    public Phi3Attention(Phi3Config config, int layerIndex) : base(nameof(Phi3Attention), config, layerIndex)
    {
        qkv_proj = new AdaptableLinear(config.HiddenSize, (heads + 2 * kvHeads) * headDim, hasBias: false);
        o_proj = new AdaptableLinear(heads * headDim, config.HiddenSize, hasBias: false);
        RegisterComponents();
    }

    public override Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, IKvCache? cache)
    {
        var qkv = qkv_proj.forward(x);                                                  // [b, t, (heads + 2 kv) · hd]
        long q = heads * headDim, kv = kvHeads * headDim;
        var (query, key, value) = (qkv.narrow(-1, 0, q), qkv.narrow(-1, q, kv), qkv.narrow(-1, q + kv, kv));
        return o_proj.forward(Attend(Heads(query, null, heads), Heads(key, null, kvHeads), Heads(value, null, kvHeads), cos, sin, mask, cache));
    }
}

/// <summary>Phi-3's SwiGLU: down(silu(gate) · up) with [gate; up] = gate_up_proj(x), with a slot for a block-level adapter.</summary>
public sealed class Phi3Mlp : nn.Module<Tensor, Tensor>, IFeedForward
{
    public readonly AdaptableLinear gate_up_proj, down_proj;

    public IFeedForwardAdapter? Adapter { get; set; }

    public Phi3Mlp(Phi3Config config) : base(nameof(Phi3Mlp))
    {
        gate_up_proj = new AdaptableLinear(config.HiddenSize, 2 * config.IntermediateSize, hasBias: false);
        down_proj = new AdaptableLinear(config.IntermediateSize, config.HiddenSize, hasBias: false);
        RegisterComponents();
    }

    /// <summary>MixLoRA's experts are LoRA pairs on these two, the fused one adapted over its whole output as PEFT would.</summary>
    public IReadOnlyList<(string Name, AdaptableLinear Layer)> Projections => [("gate_up_proj", gate_up_proj), ("down_proj", down_proj)];

    public Tensor Compute(Tensor x, Func<string, AdaptableLinear, Tensor, Tensor> project)
    {
        var gateUp = project("gate_up_proj", gate_up_proj, x);                          // [.., 2 · ffn]
        long ffn = gateUp.shape[^1] / 2;
        return project("down_proj", down_proj, nn.functional.silu(gateUp.narrow(-1, 0, ffn)) * gateUp.narrow(-1, ffn, ffn));
    }

    public override Tensor forward(Tensor x) => Adapter?.Forward(x, this) ?? Compute(x, (_, layer, input) => layer.forward(input));
}
