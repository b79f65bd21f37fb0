using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// A decoder-only transformer in the Llama style (RMSNorm, rotary embeddings, SwiGLU, causal grouped-query attention).
/// Field names equal the Hugging Face parameter names, so state-dict keys match <c>LlamaForCausalLM</c>. Qwen2, Qwen3,
/// Mistral, Phi-3 and SmolLM3 are this decoder with the options their config switches on (see <see cref="LlamaConfig.QkvBias"/>
/// and after).
/// </summary>
public class LlamaForCausalLM : CausalLanguageModel, IHuggingFaceModel
{
    public readonly LlamaModel model;
    public readonly AdaptableLinear lm_head;
    public LlamaConfig Config { get; }

    public LlamaForCausalLM(LlamaConfig config) : base(nameof(LlamaForCausalLM))
    {
        Config = config;
        model = new LlamaModel(config);
        lm_head = config.TieWordEmbeddings ? new AdaptableLinear(model.embed_tokens.weight!) : new AdaptableLinear(config.HiddenSize, config.VocabSize);
        RegisterComponents();
    }

    public override int VocabSize => Config.VocabSize;
    public override int ContextLength => Config.ContextLength;
    public override int? BosTokenId => Config.BosTokenId;
    public override IReadOnlyList<int> EosTokenIds => Config.EosTokenIds ?? [];
    public override int NumLayers => Config.NumHiddenLayers;
    public override int KeyValueHeads => Config.KeyValueHeads;
    public override int HeadDim => Config.HeadDim;
    public override bool PositionsDependOnLength =>
        Enumerable.Range(0, Config.NumHiddenLayers).Any(i => Config.LayerRope(i).Scaling?.Kind is "dynamic" or "longrope");

    public override Tensor Forward(Tensor inputIds, Tensor positions, Tensor? mask, IKvCache? cache) =>
        Logits(model.Forward(inputIds, positions, mask, cache));

    public override (Tensor Input, IReadOnlyList<Func<Tensor, Tensor>> Blocks, Func<Tensor, Tensor> Head) Chain(Tensor inputIds, Tensor positions, Tensor? mask)
    {
        var angles = model.Angles(positions);                                      // per layer: [b or 1, 1, seq, rotary_dim] each
        var blocks = model.layers.Select((layer, i) => (Func<Tensor, Tensor>)(h => layer.Forward(h, angles[i].Cos, angles[i].Sin, mask, null))).ToList();
        return (model.Embed(inputIds), blocks, h => Logits(model.norm.forward(h)));
    }

    /// <summary>The output head, with Gemma 2's soft cap c · tanh(logits / c) where the config has one.</summary>
    Tensor Logits(Tensor h)
    {
        var logits = lm_head.forward(h);                                          // [.., vocab]
        return Config.LogitSoftcap is { } cap ? (logits / cap).tanh() * cap : logits;
    }

    ModelConfig IHuggingFaceModel.ModelConfig => Config;

    public IEnumerable<CheckpointTensor> CheckpointTensors() => named_parameters()
        .Where(p => !(Config.TieWordEmbeddings && p.name == "lm_head.weight"))
        .Select(p => new CheckpointTensor(p.name, p.parameter));

    /// <summary>Skips the rotary inverse frequencies older exports saved, and a tied head some exports write out.</summary>
    public virtual string? CanonicalKey(string key) =>
        key.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) || (Config.TieWordEmbeddings && key == "lm_head.weight") ? null : key;

    /// <summary>The paths <see cref="AdaptableModules.LinearLayers"/> yields for a config, without building the model.</summary>
    public static IEnumerable<string> LinearPaths(LlamaConfig config) => LinearShapes(config).Select(l => l.Path);

    /// <summary>Each linear layer's path with its input and output sizes, from the config alone.</summary>
    public static IEnumerable<(string Path, long In, long Out)> LinearShapes(LlamaConfig c)
    {
        long hidden = c.HiddenSize, q = c.NumAttentionHeads * c.HeadDim, kv = c.KeyValueHeads * c.HeadDim, ffn = c.IntermediateSize;
        for (int i = 0; i < c.NumHiddenLayers; i++)
        {
            yield return ($"model.layers.{i}.self_attn.q_proj", hidden, q);
            yield return ($"model.layers.{i}.self_attn.k_proj", hidden, kv);
            yield return ($"model.layers.{i}.self_attn.v_proj", hidden, kv);
            yield return ($"model.layers.{i}.self_attn.o_proj", q, hidden);
            yield return ($"model.layers.{i}.mlp.gate_proj", hidden, ffn);
            yield return ($"model.layers.{i}.mlp.up_proj", hidden, ffn);
            yield return ($"model.layers.{i}.mlp.down_proj", ffn, hidden);
        }
        yield return ("lm_head", hidden, c.VocabSize);
    }
}

public sealed class LlamaModel : nn.Module<Tensor, Tensor>
{
    // Weight matrices are EmbeddingTable and AdaptableLinear: the loader keeps those in the base's precision (bf16 or
    // fp32, BasePrecision) and both return float32; norms and everything else a family adds stay float32 parameters.
    public readonly EmbeddingTable embed_tokens;
    public readonly ModuleList<LlamaDecoderLayer> layers;
    public readonly RmsNorm norm;
    /// <summary>The distinct rotary embeddings (one, or Gemma 3's local and global) and which one each layer uses.</summary>
    readonly RotaryEmbedding[] rotaries;
    readonly int[] layerRotary;
    readonly double embeddingScale;

    public LlamaModel(LlamaConfig config) : base(nameof(LlamaModel))
    {
        embed_tokens = new EmbeddingTable(config.VocabSize, config.HiddenSize);
        layers = new ModuleList<LlamaDecoderLayer>(
            Enumerable.Range(0, config.NumHiddenLayers).Select(i => new LlamaDecoderLayer(config, i)).ToArray());
        norm = new RmsNorm(config.HiddenSize, config.RmsNormEps, config.NormOffset);
        var ropes = Enumerable.Range(0, config.NumHiddenLayers).Select(i => config.LayerRope(i)).ToList();
        var distinct = ropes.Distinct().ToList();
        rotaries = [.. distinct.Select(r => new RotaryEmbedding(r.Shape, r.Scaling))];
        layerRotary = [.. ropes.Select(r => distinct.IndexOf(r))];
        embeddingScale = config.EmbeddingScale;
        RegisterComponents();
    }

    public override Tensor forward(Tensor inputIds) => throw new NotSupportedException("call Forward with positions");

    /// <summary>Each layer's rotary cos and sin for positions [b or 1, seq] (layers with the same rotary share them).</summary>
    public IReadOnlyList<(Tensor Cos, Tensor Sin)> Angles(Tensor positions)
    {
        var angles = rotaries.Select(r => r.Angles(positions)).ToList();         // [b or 1, 1, seq, rotary_dim] each
        return [.. layerRotary.Select(i => angles[i])];
    }

    /// <summary>The token embeddings [b, seq, hidden], times Gemma's √hidden_size rounded to the embedding's type as transformers does.</summary>
    public Tensor Embed(Tensor inputIds)
    {
        var h = embed_tokens.forward(inputIds);                                   // [b, seq, hidden]
        return embeddingScale == 1 ? h : h * tensor(embeddingScale, h.dtype);
    }

    public Tensor Forward(Tensor inputIds, Tensor positions, Tensor? mask, IKvCache? cache)
    {
        var angles = Angles(positions);
        var h = Embed(inputIds);                                                  // [b, seq, hidden]
        for (int i = 0; i < layers.Count; i++)
            h = layers[i].Forward(h, angles[i].Cos, angles[i].Sin, mask, cache);
        return norm.forward(h);
    }
}

public sealed class LlamaDecoderLayer : nn.Module<Tensor, Tensor>
{
    /// <summary>Llama's <see cref="LlamaAttention"/> and <see cref="LlamaMlp"/>, or the family's own (Phi-3's fused ones).</summary>
    public readonly DecoderAttention self_attn;
    public readonly nn.Module<Tensor, Tensor> mlp;
    public readonly RmsNorm input_layernorm, post_attention_layernorm;
    /// <summary>Gemma's norms around the MLP (null elsewhere); there post_attention_layernorm norms the attention's output.</summary>
    public readonly RmsNorm? pre_feedforward_layernorm, post_feedforward_layernorm;

    public LlamaDecoderLayer(LlamaConfig config, int index) : base(nameof(LlamaDecoderLayer))
    {
        self_attn = config.CreateAttention(index);
        mlp = config.CreateMlp(index);
        input_layernorm = new RmsNorm(config.HiddenSize, config.RmsNormEps, config.NormOffset);
        post_attention_layernorm = new RmsNorm(config.HiddenSize, config.RmsNormEps, config.NormOffset);
        if (config.SandwichNorms)
            (pre_feedforward_layernorm, post_feedforward_layernorm) =
                (new RmsNorm(config.HiddenSize, config.RmsNormEps, config.NormOffset), new RmsNorm(config.HiddenSize, config.RmsNormEps, config.NormOffset));
        RegisterComponents();
    }

    public override Tensor forward(Tensor x) => throw new NotSupportedException("call Forward with positions");

    public Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, IKvCache? cache)
    {
        var attention = self_attn.Forward(input_layernorm.forward(x), cos, sin, mask, cache);
        if (pre_feedforward_layernorm is null)
        {
            var h = x + attention;
            return h + mlp.forward(post_attention_layernorm.forward(h));
        }
        var g = x + post_attention_layernorm.forward(attention);
        return g + post_feedforward_layernorm!.forward(mlp.forward(pre_feedforward_layernorm.forward(g)));
    }
}

/// <summary>
/// A decoder layer's causal grouped-query attention from the projected queries, keys and values on (the rotation on the
/// layers that rotate, the cache, the sliding window), shared by the ways of projecting: Llama's separate q/k/v and
/// Phi-3's fused qkv_proj. Each subclass owns its projections, the output one included.
/// </summary>
public abstract class DecoderAttention : nn.Module<Tensor, Tensor>
{
    protected readonly int heads, kvHeads, headDim, layerIndex;
    readonly int? window;
    readonly bool rope;
    readonly double scale;
    readonly double? softcap;

    protected DecoderAttention(string name, LlamaConfig config, int layerIndex) : base(name) =>
        (heads, kvHeads, headDim, this.layerIndex, window, rope, scale, softcap) =
            (config.NumAttentionHeads, config.KeyValueHeads, config.HeadDim, layerIndex, config.LayerWindow(layerIndex), config.UsesRope(layerIndex),
             config.AttentionScale, config.AttentionSoftcap);

    public override Tensor forward(Tensor x) => throw new NotSupportedException("call Forward with positions");

    public abstract Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, IKvCache? cache);

    /// <summary>Attention output [b, t, heads · hd] of q [b, heads, t, hd] over k, v [b, kv, t, hd] (the cache's keys first).</summary>
    protected Tensor Attend(Tensor q, Tensor k, Tensor v, Tensor cos, Tensor sin, Tensor? mask, IKvCache? cache)
    {
        long b = q.shape[0], t = q.shape[2];
        if (rope) (q, k) = (RotaryEmbedding.Apply(q, cos, sin), RotaryEmbedding.Apply(k, cos, sin));
        if (cache is not null) (k, v) = cache.Append(layerIndex, k, v);            // [b, kv, past+t, hd]
        if (kvHeads != heads)
            (k, v) = (k.repeat_interleave(heads / kvHeads, 1), v.repeat_interleave(heads / kvHeads, 1));
        if (window is { } w) mask = SlidingWindow(mask, k.shape[2], w);
        // The fused kernel scales by 1/√head_dim; Gemma's other scale goes into q first.
        var y = softcap is { } cap ? SoftcappedAttention(q, k, v, mask, scale, cap)
            : nn.functional.scaled_dot_product_attention(scale == 1 / Math.Sqrt(headDim) ? q : q * (scale * Math.Sqrt(headDim)), k, v, mask);   // [b, heads, t, hd]
        return y.transpose(1, 2).reshape(b, t, heads * headDim);
    }

    /// <summary>
    /// Gemma 2's attention: scores s = scale · q·k capped to c · tanh(s / c) before the mask and softmax, which the fused
    /// kernel cannot do.
    /// </summary>
    static Tensor SoftcappedAttention(Tensor q, Tensor k, Tensor v, Tensor? mask, double scale, double cap)
    {
        var scores = (q.matmul(k.transpose(-2, -1)) * (scale / cap)).tanh() * cap;       // [b, heads, t, keys]
        if (mask is not null) scores = scores.masked_fill(mask.logical_not(), double.NegativeInfinity);
        return scores.softmax(-1).matmul(v);                                            // [b, heads, t, hd]
    }

    /// <summary>
    /// [b, t, n · hd] → [b, n, t, hd], normed per head first where the family does (as [b, t · n, hd], so a norm
    /// adapter's per-row [rows, 1, hd] scale lines up with the batch).
    /// </summary>
    protected Tensor Heads(Tensor x, RmsNorm? norm, int n)
    {
        long b = x.shape[0], t = x.shape[1];
        if (norm is not null) x = norm.forward(x.view(b, t * n, headDim));
        return x.view(b, t, n, headDim).transpose(1, 2);
    }

    /// <summary>
    /// Mistral's sliding window: of the keys <paramref name="mask"/> lets a query see (its own sequence's positions up to
    /// its own), only the latest <paramref name="window"/> stay, i.e. query i sees key j when i − window &lt; j ≤ i
    /// (transformers' sliding_window_overlay). Counting allowed keys from the right needs no positions, so the same rule
    /// serves prefill, padded batches and single-token decoding over a cache (a null mask there allows every cached key).
    /// </summary>
    static Tensor SlidingWindow(Tensor? mask, long keys, int window)
    {
        var allowed = mask ?? ones(1, keys, ScalarType.Bool);                          // [.., keys]
        var fromRight = allowed.flip(-1).cumsum(-1, ScalarType.Int64).flip(-1);          // allowed keys at or after each key
        return allowed.logical_and(fromRight.le(window));
    }
}

/// <summary>Llama's attention: separate q, k, v and o projections (biases and Qwen3's q/k norms as the config says).</summary>
public sealed class LlamaAttention : DecoderAttention
{
    public readonly AdaptableLinear q_proj, k_proj, v_proj, o_proj;
    /// <summary>Qwen3's per-head RMSNorm of queries and keys (null in the other families).</summary>
    public readonly RmsNorm? q_norm, k_norm;

    public LlamaAttention(LlamaConfig config, int layerIndex) : base(nameof(LlamaAttention), config, layerIndex)
    {
        q_proj = new AdaptableLinear(config.HiddenSize, heads * headDim, config.QkvBias);
        k_proj = new AdaptableLinear(config.HiddenSize, kvHeads * headDim, config.QkvBias);
        v_proj = new AdaptableLinear(config.HiddenSize, kvHeads * headDim, config.QkvBias);
        o_proj = new AdaptableLinear(heads * headDim, config.HiddenSize, config.OutputBias);
        if (config.QkNorm) (q_norm, k_norm) = (new RmsNorm(headDim, config.RmsNormEps, config.NormOffset), new RmsNorm(headDim, config.RmsNormEps, config.NormOffset));
        RegisterComponents();
    }

    public override Tensor Forward(Tensor x, Tensor cos, Tensor sin, Tensor? mask, IKvCache? cache)
    {
        var q = Heads(q_proj.forward(x), q_norm, heads);                           // [b, heads, t, hd]
        var k = Heads(k_proj.forward(x), k_norm, kvHeads);                         // [b, kv, t, hd]
        var v = Heads(v_proj.forward(x), null, kvHeads);                           // [b, kv, t, hd]
        return o_proj.forward(Attend(q, k, v, cos, sin, mask, cache));             // [b, t, hidden]
    }
}

/// <summary>Gated feed-forward: down(act(gate(x)) * up(x)), SwiGLU or Gemma's GeGLU, with a slot for a block-level adapter.</summary>
public sealed class LlamaMlp : nn.Module<Tensor, Tensor>, IFeedForward
{
    public readonly AdaptableLinear gate_proj, up_proj, down_proj;
    /// <summary>silu (SwiGLU), or Gemma's gelu_pytorch_tanh (GeGLU).</summary>
    readonly Func<Tensor, Tensor> act;

    public IFeedForwardAdapter? Adapter { get; set; }

    /// <summary>Its hidden width is intermediate_size, or <paramref name="intermediateSize"/> (a mixture's experts: moe_intermediate_size).</summary>
    public LlamaMlp(LlamaConfig config, int? intermediateSize = null) : base(nameof(LlamaMlp))
    {
        act = ModelConfig.Activation(config.MlpActivation) ?? throw new ArgumentException($"activation '{config.MlpActivation}' is not supported");
        int ffn = intermediateSize ?? config.IntermediateSize;
        gate_proj = new AdaptableLinear(config.HiddenSize, ffn, config.MlpBias);
        up_proj = new AdaptableLinear(config.HiddenSize, ffn, config.MlpBias);
        down_proj = new AdaptableLinear(ffn, config.HiddenSize, config.MlpBias);
        RegisterComponents();
    }

    public IReadOnlyList<(string Name, AdaptableLinear Layer)> Projections => [("gate_proj", gate_proj), ("up_proj", up_proj), ("down_proj", down_proj)];

    public Tensor Compute(Tensor x, Func<string, AdaptableLinear, Tensor, Tensor> project) =>
        project("down_proj", down_proj, act(project("gate_proj", gate_proj, x)) * project("up_proj", up_proj, x));

    public override Tensor forward(Tensor x) =>
        Adapter?.Forward(x, this) ?? down_proj.forward(act(gate_proj.forward(x)) * up_proj.forward(x));
}

/// <summary>
/// Rotary position embedding with the Hugging Face Llama layout (rotate the two halves of each head's first rotary_dim
/// dimensions; the rest pass through), its frequencies and cos/sin factor from the config's rope type (<see cref="RopeTypes"/>).
/// </summary>
public sealed class RotaryEmbedding
{
    readonly RopeShape shape;
    readonly RopeScaling? scaling;
    readonly RopeType type;

    public RotaryEmbedding(RopeShape shape, RopeScaling? scaling = null) =>
        (this.shape, this.scaling, type) = (shape, scaling, RopeTypes.All[scaling?.Kind ?? "default"]);

    /// <summary>
    /// cos and sin [b, 1, seq, rotary_dim] of the angles for positions [b, seq] (b may be 1 to share them); a row's
    /// length, for the rope types that read it, is 1 + its largest position here.
    /// </summary>
    public (Tensor Cos, Tensor Sin) Angles(Tensor positions)
    {
        var p = positions.to_type(ScalarType.Float64);                                        // [b, seq]
        var (invFreq, factor) = type.Frequencies(scaling, shape, p.amax([-1]) + 1);           // [b or 1, rd/2]
        var freqs = p.unsqueeze(-1) * invFreq.unsqueeze(1);                                   // [b, seq, rd/2]
        var emb = cat([freqs, freqs], -1).unsqueeze(1);                                       // [b, 1, seq, rd]
        return ((emb.cos() * factor).to_type(ScalarType.Float32), (emb.sin() * factor).to_type(ScalarType.Float32));
    }

    /// <summary>x [.., hd] rotated by cos, sin [.., rd]: the first rd dimensions as two halves, the rest unchanged.</summary>
    public static Tensor Apply(Tensor x, Tensor cos, Tensor sin)
    {
        long rd = cos.shape[^1], half = rd / 2;
        var r = rd == x.shape[^1] ? x : x.narrow(-1, 0, rd);
        var rotated = cat([-r.narrow(-1, half, half), r.narrow(-1, 0, half)], -1);
        var y = r * cos + rotated * sin;
        return rd == x.shape[^1] ? y : cat([y, x.narrow(-1, rd, x.shape[^1] - rd)], -1);
    }
}
