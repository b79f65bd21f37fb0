using System.Text.Json.Nodes;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Exports;

/// <summary>
/// A decoder family as llama.cpp knows it: the GGUF architecture name and whether q/k rows are permuted. Llama checkpoints
/// rotate the two halves of each head (Hugging Face's layout) while llama.cpp's <c>llama</c> architecture rotates adjacent
/// pairs, so the converter reorders their q and k rows; qwen2/qwen3 use llama.cpp's NEOX rope, the Hugging Face layout.
/// </summary>
/// <param name="Name">llama.cpp's architecture name.</param>
/// <param name="PermuteQueryKey">Whether q/k rows are reordered for llama.cpp's adjacent-pair rope.</param>
/// <param name="Extras">The family's own metadata and tensors (or a refusal), where the converter writes some.</param>
public sealed record GgufArchitecture(string Name, bool PermuteQueryKey, Func<LlamaConfig, (IEnumerable<(string, object)> Metadata, IEnumerable<GgufTensor> Tensors)>? Extras = null)
{
    /// <summary>Layer modules this architecture names otherwise than Llama's (Gemma's four norms), over <see cref="GgufExport"/>'s map.</summary>
    public IReadOnlyDictionary<string, string>? LayerTensors { get; init; }
}

/// <summary>
/// Writes a decoder model with its tokenizer as a GGUF file that llama.cpp (and Ollama) load, following llama.cpp's
/// <c>convert_hf_to_gguf.py</c>: the same tensor names, metadata keys, q/k permutation and tokenizer arrays.
/// </summary>
public static class GgufExport
{
    // Before Architectures, which uses it (static fields initialise in order).
    /// <summary>Gemma's norms in gguf-py's TensorNameMap: post_attention_layernorm norms the attention output there, not the MLP input.</summary>
    static readonly Dictionary<string, string> GemmaNorms = new(StringComparer.Ordinal)
    {
        ["post_attention_layernorm"] = "post_attention_norm", ["pre_feedforward_layernorm"] = "ffn_norm", ["post_feedforward_layernorm"] = "post_ffw_norm",
    };

    /// <summary>
    /// By Hugging Face <c>model_type</c>, the converter's class for it. A decoder family whose config is (or derives from) a
    /// <see cref="LlamaConfig"/> is one entry here; <see cref="TensorName"/> maps qwen2's q/k/v biases (<c>blk.N.attn_q.bias</c>…)
    /// and qwen3's <c>q_norm</c>/<c>k_norm</c> (<c>blk.N.attn_q_norm.weight</c>).
    /// </summary>
    public static readonly IReadOnlyDictionary<string, GgufArchitecture> Architectures = new Dictionary<string, GgufArchitecture>(StringComparer.Ordinal)
    {
        ["llama"] = new("llama", PermuteQueryKey: true),
        // convert_hf_to_gguf.py registers MistralForCausalLM on LlamaModel: architecture llama, q/k permuted, and no
        // sliding-window key (llama.cpp's llama architecture attends to every position, so past the window, Mistral v0.1 differs from ours; docs/MODELS.md).
        ["mistral"] = new("llama", PermuteQueryKey: true),
        // Qwen2Model and Qwen3Model(Qwen2Model) copy tensors unpermuted: llama.cpp runs qwen2/qwen3 with NEOX rope.
        ["qwen2"] = new("qwen2", PermuteQueryKey: false),
        ["qwen3"] = new("qwen3", PermuteQueryKey: false),
        // Phi3MiniModel copies qkv_proj and gate_up_proj fused (attn_qkv, ffn_up) and unpermuted: llama.cpp's phi3 is NEOX rope.
        ["phi3"] = new("phi3", PermuteQueryKey: false, Phi3Extras),
        // SmolLM3Model(LlamaModel): llama's tensors, q/k permuted; llama.cpp fixes the NoPE layers at every 4th.
        ["smollm3"] = new("smollm3", PermuteQueryKey: true, SmolLM3Extras),
        // Qwen3MoeModel(Qwen2MoeModel): qwen3's tensors unpermuted, the router as ffn_gate_inp and each layer's experts
        // stacked into one 3D tensor per projection (ffn_gate_exps, ffn_up_exps, ffn_down_exps; ExpertTensors).
        ["qwen3_moe"] = new("qwen3moe", PermuteQueryKey: false, Qwen3MoeExtras),
        // Gemma2Model / Gemma3Model: NEOX rope (unpermuted), their norm names, and norm weights + 1 (see Write).
        ["gemma2"] = new("gemma2", PermuteQueryKey: false, c => (GemmaExtras(c, "gemma2"), [])) { LayerTensors = GemmaNorms },
        ["gemma3_text"] = new("gemma3", PermuteQueryKey: false, c => (GemmaExtras(c, "gemma3"), [])) { LayerTensors = GemmaNorms },
    };

    /// <summary>The types a caller may ask for, by the names llama.cpp's tools use.</summary>
    public static readonly IReadOnlyDictionary<string, GgufType> Types = new Dictionary<string, GgufType>(StringComparer.Ordinal)
    {
        ["f32"] = GgufType.F32, ["f16"] = GgufType.F16, ["bf16"] = GgufType.BF16, ["q8_0"] = GgufType.Q8_0,
    };

    /// <summary>Hugging Face module names inside a decoder layer and llama.cpp's (gguf-py's <c>TensorNameMap</c>).</summary>
    static readonly Dictionary<string, string> LayerTensors = new(StringComparer.Ordinal)
    {
        ["self_attn.q_proj"] = "attn_q", ["self_attn.k_proj"] = "attn_k", ["self_attn.v_proj"] = "attn_v", ["self_attn.o_proj"] = "attn_output",
        ["self_attn.q_norm"] = "attn_q_norm", ["self_attn.k_norm"] = "attn_k_norm",
        ["mlp.gate_proj"] = "ffn_gate", ["mlp.up_proj"] = "ffn_up", ["mlp.down_proj"] = "ffn_down",
        // A mixture's router (its experts are stacked, not named one by one: ExpertTensors).
        ["mlp.gate"] = "ffn_gate_inp",
        // Phi-3's fused modules: llama.cpp splits attn_qkv by head counts and ffn_up into [gate; up] halves itself.
        ["self_attn.qkv_proj"] = "attn_qkv", ["mlp.gate_up_proj"] = "ffn_up",
        ["input_layernorm"] = "attn_norm", ["post_attention_layernorm"] = "ffn_norm",
    };

    /// <summary>
    /// Writes <paramref name="model"/> (a loaded model, an adapter merged into it or not) with the tokenizer of the base
    /// folder <paramref name="folder"/> as GGUF <paramref name="type"/>; norms stay f32 as the converter keeps them.
    /// </summary>
    /// <exception cref="NotSupportedException">A family, tokenizer or rope scaling llama.cpp would not read as this model.</exception>
    public static void Write(Stream output, nn.Module model, string folder, string name, GgufType type, ChatTemplate? template)
    {
        var (llama, arch) = Architecture(model);
        string a = arch.Name;
        string rope = llama.Rope?.Kind ?? "default";
        var factors = rope == "llama3" ? RopeFactors(llama) : null;
        // Only LlamaModel.generate_extra_tensors writes rope_freqs, and only llama.cpp's llama architecture reads it.
        if (factors is not null && a != "llama")
            throw new NotSupportedException($"llama3 rope scaling is not exported for {llama.ModelType} (llama.cpp's {a} architecture reads no rope_freqs)");
        if (rope is not ("default" or "llama3" or "yarn") && !(rope == "longrope" && a == "phi3") && !(rope == "linear" && a == "gemma3"))
            throw new NotSupportedException(rope switch
            {
                "dynamic" => "dynamic (NTK) rope scaling is not exported as GGUF: llama.cpp has no rope whose base grows with the sequence's length",
                "longrope" => $"longrope rope scaling is exported for phi3 only (llama.cpp reads rope_factors_long/short in its phi3 architecture, not in {a})",
                _ => $"rope scaling '{rope}' is not exported as GGUF (default, llama3, yarn, phi3's longrope and gemma3's linear are)",
            });
        var extras = arch.Extras?.Invoke(llama);
        var metadata = new List<(string, object)>
        {
            ("general.architecture", a), ("general.type", "model"), ("general.name", name),
            ("general.file_type", (uint)FileType(type)), ("general.alignment", (uint)Gguf.Alignment),
            ($"{a}.vocab_size", (uint)llama.VocabSize), ($"{a}.context_length", (uint)llama.MaxPositionEmbeddings),
            ($"{a}.embedding_length", (uint)llama.HiddenSize), ($"{a}.block_count", (uint)llama.NumHiddenLayers),
            ($"{a}.feed_forward_length", (uint)llama.IntermediateSize), ($"{a}.rope.dimension_count", (uint)llama.RotaryDim),
            ($"{a}.attention.head_count", (uint)llama.NumAttentionHeads), ($"{a}.attention.head_count_kv", (uint)llama.KeyValueHeads),
            ($"{a}.rope.freq_base", (float)llama.Theta), ($"{a}.attention.layer_norm_rms_epsilon", (float)llama.RmsNormEps),
        };
        // TextModel.set_gguf_parameters: key_length / value_length whenever the config names a head_dim (Qwen3's differs
        // from hidden / heads; llama.cpp would otherwise assume hidden / heads).
        if (llama.HeadDimension is { } headDim)
            metadata.AddRange([($"{a}.attention.key_length", (uint)headDim), ($"{a}.attention.value_length", (uint)headDim)]);
        if (rope == "yarn") metadata.AddRange(Yarn(a, llama));
        if (extras is { } e) metadata.AddRange(e.Metadata);
        metadata.AddRange(Vocabulary(folder, llama));
        if (template is not null) metadata.Add(("tokenizer.chat_template", template.Source));

        var tensors = ((IHuggingFaceModel)model).CheckpointTensors().Where(t => !t.Key.Contains(".mlp.experts.", StringComparison.Ordinal)).Select(t =>
        {
            var p = t.Parameter;
            long[] shape = t.Transposed ? [.. p.shape.Reverse()] : p.shape;
            string gguf = TensorName(t.Key, arch);
            // Gemma stores w for its 1 + w norms; the converter writes 1 + w, which llama.cpp multiplies by.
            bool offset = llama.NormOffset != 0 && t.Key.EndsWith("norm.weight", StringComparison.Ordinal);
            return new GgufTensor(gguf, shape, TensorType(shape, type), () =>
            {
                var value = t.Transposed ? p.detach().t() : p.detach();
                return Rows(arch, llama, gguf, offset ? value + llama.NormOffset : value);
            });
        }).ToList();
        if (factors is not null)
            tensors.Add(new GgufTensor("rope_freqs.weight", [factors.Length], GgufType.F32, () => tensor(factors)));
        if (extras is { } more) tensors.AddRange(more.Tensors);
        tensors.AddRange(ExpertTensors(model, type));
        Gguf.Write(output, metadata, tensors);
    }

    /// <summary>
    /// A mixture's experts as the converter writes them: per layer and projection one tensor [experts, out, in] of the
    /// experts' weights in order (<c>blk.N.ffn_gate_exps.weight</c>, <c>ffn_up_exps</c>, <c>ffn_down_exps</c>).
    /// </summary>
    static IEnumerable<GgufTensor> ExpertTensors(nn.Module model, GgufType type)
    {
        if (model is not LlamaForCausalLM { model.layers: var layers }) yield break;
        for (int i = 0; i < layers.Count; i++)
        {
            if (layers[i].mlp is not Qwen3MoeSparseMoeBlock moe) continue;
            foreach (var (name, weight) in new (string, Func<LlamaMlp, Tensor>)[] { ("ffn_gate_exps", e => e.gate_proj.weight), ("ffn_up_exps", e => e.up_proj.weight), ("ffn_down_exps", e => e.down_proj.weight) })
            {
                long[] shape = [moe.experts.Count, .. weight(moe.experts[0]).shape];
                yield return new GgufTensor($"blk.{i}.{name}.weight", shape, TensorType(shape, type), () => stack(moe.experts.Select(e => weight(e).detach())));
            }
        }
    }

    /// <summary>
    /// A LoRA adapter, not merged, as llama.cpp's GGUF LoRA adapter (what <c>convert_lora_to_gguf.py</c> writes, loaded
    /// with <c>llama-cli --lora</c> or an Ollama <c>ADAPTER</c> line over the base's GGUF): <c>general.type</c> adapter,
    /// <c>adapter.type</c> lora, and per adapted layer <c>{tensor}.lora_a</c> [r, in] and <c>.lora_b</c> [out, r].
    /// llama.cpp scales B A by alpha / r with r read from lora_a, so alpha is written as scaling · r (rsLoRA's scaling too).
    /// q/k get the base's row permutation on B, whose rows are the weight's rows.
    /// </summary>
    /// <exception cref="NotSupportedException">DoRA (llama.cpp has no magnitude vectors), or a family not exported.</exception>
    public static void WriteLoraAdapter(Stream output, nn.Module model, LoraConfig lora, IReadOnlyDictionary<string, LoraWeights> weights, string name, GgufType type)
    {
        if (lora.UseDora) throw new NotSupportedException("DoRA has no llama.cpp adapter form (no magnitude vectors); export the merged model");
        var (llama, arch) = Architecture(model);
        if (weights.Keys.FirstOrDefault(p => p.Contains(".mlp.experts.", StringComparison.Ordinal)) is { } expert)
            throw new NotSupportedException($"LoRA on a mixture's experts ({expert}) is not exported as a llama.cpp adapter (its experts are stacked 3D tensors); export the merged model");
        var metadata = new List<(string, object)>
        {
            ("general.architecture", arch.Name), ("general.type", "adapter"), ("general.name", name),
            ("general.file_type", (uint)FileType(type)), ("general.alignment", (uint)Gguf.Alignment),
            ("adapter.type", "lora"), ("adapter.lora.alpha", (float)(lora.Scaling * lora.Rank)),
        };
        var tensors = new List<GgufTensor>();
        foreach (var (path, w) in weights.OrderBy(w => w.Key, StringComparer.Ordinal))
        {
            string gguf = TensorName(path + ".weight", arch);
            var (a, b) = (w.A, w.B);
            tensors.Add(new GgufTensor(gguf + ".lora_a", a.shape, TensorType(a.shape, type), () => a.detach()));
            tensors.Add(new GgufTensor(gguf + ".lora_b", b.shape, TensorType(b.shape, type), () => Rows(arch, llama, gguf, b.detach())));
        }
        Gguf.Write(output, metadata, tensors);
    }

    static (LlamaConfig, GgufArchitecture) Architecture(nn.Module model)
    {
        var config = (model as IHuggingFaceModel)?.ModelConfig;
        if (config is not LlamaConfig llama || !Architectures.TryGetValue(config.ModelType, out var arch))
            throw new NotSupportedException($"{config?.ModelType ?? model.GetType().Name} models are not exported as GGUF (supported: {string.Join(", ", Architectures.Keys)})");
        return (llama, arch);
    }

    /// <summary>llama.cpp's <c>llama_ftype</c> for the file as a whole.</summary>
    static int FileType(GgufType type) => type switch
    {
        GgufType.F32 => 0, GgufType.F16 => 1, GgufType.Q8_0 => 7, GgufType.BF16 => 32,
        _ => throw new NotSupportedException($"GGUF type {type}"),
    };

    /// <summary>
    /// As the converter chooses: 1-D tensors (norms, biases) stay f32; a matrix whose rows do not fill Q8_0 blocks falls
    /// back to f16.
    /// </summary>
    static GgufType TensorType(long[] shape, GgufType requested) =>
        shape.Length == 1 ? GgufType.F32
        : requested == GgufType.Q8_0 && shape[^1] % Gguf.Q8Block != 0 ? GgufType.F16
        : requested;

    static string TensorName(string key, GgufArchitecture arch)
    {
        switch (key)
        {
            case "model.embed_tokens.weight": return "token_embd.weight";
            case "model.norm.weight": return "output_norm.weight";
            case "lm_head.weight": return "output.weight";
        }
        var parts = key.Split('.');
        // model.layers.{i}.{module...}.{weight|bias}
        if (parts is ["model", "layers", var index, .. var module, var kind] && int.TryParse(index, out _)
            && (arch.LayerTensors?.GetValueOrDefault(string.Join('.', module)) ?? LayerTensors.GetValueOrDefault(string.Join('.', module))) is { } gguf)
            return $"blk.{index}.{gguf}.{kind}";
        throw new NotSupportedException($"tensor {key} has no GGUF name");
    }

    /// <summary>A tensor whose rows are the output rows of the weight named <paramref name="gguf"/>, q/k rows permuted where the architecture rotates pairs.</summary>
    static Tensor Rows(GgufArchitecture arch, LlamaConfig c, string gguf, Tensor rows) =>
        !arch.PermuteQueryKey ? rows
        : gguf.EndsWith(".attn_q.weight", StringComparison.Ordinal) ? PermuteRotaryHalves(rows, c.NumAttentionHeads)
        : gguf.EndsWith(".attn_k.weight", StringComparison.Ordinal) ? PermuteRotaryHalves(rows, c.KeyValueHeads)
        : rows;

    /// <summary>
    /// <c>LlamaModel.permute</c> of convert_hf_to_gguf.py: per head, rows [first half; second half] become interleaved
    /// pairs (row i of the first half, then row i of the second), the order llama.cpp's rope rotates.
    /// </summary>
    static Tensor PermuteRotaryHalves(Tensor weight, int heads) =>
        weight.reshape(heads, 2, weight.shape[0] / heads / 2, weight.shape[1]).transpose(1, 2).reshape(weight.shape);

    /// <summary>
    /// Llama 3.1's rope scaling as the converter writes it: a <c>rope_freqs</c> tensor of per-frequency divisors (1 for
    /// short wavelengths, factor for long ones, interpolated between), the same curve <see cref="RotaryEmbedding"/> applies.
    /// </summary>
    public static float[]? RopeFactors(LlamaConfig c)
    {
        if (c.Rope is not { } s || s.Kind == "default") return null;
        if (s.Kind != "llama3") throw new NotSupportedException($"rope scaling '{s.Kind}' is not exported as GGUF (llama3 and none are)");
        double factor = s.Factor!.Value, low = s.LowFreqFactor!.Value, high = s.HighFreqFactor!.Value, context = s.OriginalMaxPositionEmbeddings!.Value;
        double lowWavelength = context / low, highWavelength = context / high;
        return Enumerable.Range(0, c.HeadDim / 2).Select(i =>
        {
            double wavelength = 2 * Math.PI * Math.Pow(c.Theta, 2.0 * i / c.HeadDim);
            if (wavelength < highWavelength) return 1f;
            if (wavelength > lowWavelength) return (float)factor;
            double smooth = (context / wavelength - low) / (high - low);
            return (float)(1 / ((1 - smooth) / factor + smooth));
        }).ToArray();
    }

    /// <summary>
    /// YaRN as the converters write it (rope.scaling.type yarn, factor, original context; beta_fast/slow where the config
    /// gives them); llama.cpp multiplies cos and sin by 0.1 ln(factor) + 1 itself, so a config's own attention_factor,
    /// mscale or unfloored bounds (truncate false) have no GGUF form and are refused.
    /// </summary>
    static IEnumerable<(string, object)> Yarn(string a, LlamaConfig c)
    {
        var s = c.Rope!;
        if (s.AttentionFactor is not null || s.Mscale is not null || s.MscaleAllDim is not null || s.Truncate == false)
            throw new NotSupportedException("yarn rope scaling with attention_factor, mscale, mscale_all_dim or truncate false is not exported as GGUF (llama.cpp computes its own YaRN scale from factor)");
        yield return ($"{a}.rope.scaling.type", "yarn");
        yield return ($"{a}.rope.scaling.factor", (float)s.Factor!.Value);
        yield return ($"{a}.rope.scaling.original_context_length", (uint)(s.OriginalMaxPositionEmbeddings ?? c.MaxPositionEmbeddings));
        if (s.BetaFast is { } fast) yield return ($"{a}.rope.scaling.yarn_beta_fast", (float)fast);
        if (s.BetaSlow is { } slow) yield return ($"{a}.rope.scaling.yarn_beta_slow", (float)slow);
    }

    /// <summary>
    /// Phi3MiniModel's keys: the original context, the sliding window (0 for none) and, for LongRoPE, the two factor
    /// tensors with the cos/sin scale √(1 + ln(max / original) / ln original). llama.cpp picks the long factors for every
    /// position when its context (n_ctx) exceeds the original, where transformers picks them by the sequence's length.
    /// </summary>
    static (IEnumerable<(string, object)>, IEnumerable<GgufTensor>) Phi3Extras(LlamaConfig c)
    {
        var phi = (Phi3Config)c;
        int original = phi.OriginalMaxPositionEmbeddings ?? c.Rope?.OriginalMaxPositionEmbeddings ?? c.MaxPositionEmbeddings;
        var metadata = new List<(string, object)>
        {
            ("phi3.rope.scaling.original_context_length", (uint)original), ("phi3.attention.sliding_window", (uint)(phi.SlidingWindow ?? 0)),
        };
        var tensors = new List<GgufTensor>();
        if (c.Rope is { Kind: "longrope" } s)
        {
            if (phi.OriginalMaxPositionEmbeddings is null && s.OriginalMaxPositionEmbeddings is null)
                throw new NotSupportedException("longrope without original_max_position_embeddings is not exported as GGUF (the converter reads it)");
            double scale = (double)c.MaxPositionEmbeddings / original;
            double attention = scale > 1 ? Math.Sqrt(1 + Math.Log(scale) / Math.Log(original)) : 1;
            if (s.AttentionFactor is { } given && Math.Abs(given - attention) > 1e-6 * attention)
                throw new NotSupportedException($"longrope attention_factor {given} is not exported as GGUF (the converter writes √(1 + ln s / ln L) = {attention})");
            metadata.Add(("phi3.rope.scaling.attn_factor", (float)attention));
            tensors.Add(new GgufTensor("rope_factors_long.weight", [s.LongFactor!.Length], GgufType.F32, () => tensor(s.LongFactor.Select(f => (float)f).ToArray())));
            tensors.Add(new GgufTensor("rope_factors_short.weight", [s.ShortFactor!.Length], GgufType.F32, () => tensor(s.ShortFactor.Select(f => (float)f).ToArray())));
        }
        return (metadata, tensors);
    }

    /// <summary>llama.cpp's smollm3 makes every 4th layer NoPE (no GGUF key says otherwise), so other layouts are refused.</summary>
    static (IEnumerable<(string, object)>, IEnumerable<GgufTensor>) SmolLM3Extras(LlamaConfig c)
    {
        if (Enumerable.Range(0, c.NumHiddenLayers).FirstOrDefault(i => c.UsesRope(i) != ((i + 1) % 4 != 0), -1) is var layer and >= 0)
            throw new NotSupportedException($"smollm3 with layer {layer} {(c.UsesRope(layer) ? "rotating" : "NoPE")} is not exported as GGUF (llama.cpp's smollm3 makes exactly every 4th layer NoPE)");
        return ([], []);
    }

    /// <summary>
    /// Qwen2MoeModel's keys: the expert counts and the experts' width. llama.cpp's qwen3moe makes every layer a mixture and
    /// always renormalises the top-k weights, so dense layers and norm_topk_prob false are refused.
    /// </summary>
    static (IEnumerable<(string, object)>, IEnumerable<GgufTensor>) Qwen3MoeExtras(LlamaConfig c)
    {
        var moe = (Qwen3MoeConfig)c;
        if (Enumerable.Range(0, c.NumHiddenLayers).FirstOrDefault(i => !moe.IsSparse(i), -1) is var dense and >= 0)
            throw new NotSupportedException($"qwen3_moe with a dense layer ({dense}, by mlp_only_layers or decoder_sparse_step) is not exported as GGUF (llama.cpp's qwen3moe makes every layer a mixture)");
        if (!moe.NormTopkProb)
            throw new NotSupportedException("qwen3_moe with norm_topk_prob false is not exported as GGUF (llama.cpp's qwen3moe always renormalises the top-k routing weights)");
        return ([("qwen3moe.expert_count", (uint)moe.NumExperts), ("qwen3moe.expert_used_count", (uint)moe.NumExpertsPerTok),
            ("qwen3moe.expert_feed_forward_length", (uint)moe.MoeIntermediateSize)], []);
    }

    /// <summary>
    /// Gemma2Model's and Gemma3Model's keys (convert_hf_to_gguf.py), after checking that llama.cpp's gemma2/gemma3 graphs
    /// compute this config: they fix what the config could vary. Local layers follow the released pattern (Gemma 2 even
    /// layers, Gemma 3 five of every six); the attention scale is 1/√head_dim (1/√(hidden / heads) for the 27B sizes, which
    /// llama.cpp tells by layer count), not read from the file; Gemma 3's graph has no soft-capping and local rope base 10000.
    /// </summary>
    static IEnumerable<(string, object)> GemmaExtras(LlamaConfig config, string arch) => [.. GemmaKeys(config, arch)];

    static IEnumerable<(string, object)> GemmaKeys(LlamaConfig config, string arch)
    {
        var c = (Gemma2Config)config;
        var gemma3 = c as Gemma3TextConfig;
        var expectedLocal = Enumerable.Range(0, c.NumHiddenLayers).Select(i => gemma3 is null ? i % 2 == 0 : (i + 1) % 6 != 0);
        if (!expectedLocal.SequenceEqual(Enumerable.Range(0, c.NumHiddenLayers).Select(c.IsSliding)))
            throw new NotSupportedException($"{c.ModelType}'s local/global layer pattern differs from the released one, which llama.cpp's {arch} fixes");
        bool is27B = c.NumHiddenLayers == (gemma3 is null ? 46 : 62);
        double scalar = is27B ? (double)c.HiddenSize / c.NumAttentionHeads : c.HeadDim;
        if (c.QueryPreAttnScalar != scalar)
            throw new NotSupportedException($"query_pre_attn_scalar {c.QueryPreAttnScalar} is not exported: llama.cpp's {arch} scales attention by 1/√{scalar} for this shape");
        if (c.SlidingWindow is not { } window) throw new NotSupportedException($"sliding_window null is not exported (llama.cpp's {arch} has windowed layers)");
        if (c.Rope is { } rope && rope.Kind != "default" && (gemma3 is null || rope.Kind != "linear"))
            throw new NotSupportedException($"rope scaling '{rope.Kind}' is not exported for {c.ModelType}" + (gemma3 is null ? "" : " (linear is)"));
        yield return ($"{arch}.attention.sliding_window", (uint)window);
        if (gemma3 is null)
        {
            // Gemma2Model writes both caps. Without the keys llama.cpp's gemma2 caps anyway (measured: a model with no caps
            // disagrees by 1e-2 of the largest logit), so a config without them is refused.
            if (c.AttnLogitSoftcapping is not { } attn || c.FinalLogitSoftcapping is not { } final)
                throw new NotSupportedException("gemma2 without attn_logit_softcapping and final_logit_softcapping is not exported (llama.cpp's gemma2 caps by default)");
            yield return ($"{arch}.attn_logit_softcapping", (float)attn);
            yield return ($"{arch}.final_logit_softcapping", (float)final);
            yield break;
        }
        if (c.AttnLogitSoftcapping is not null || c.FinalLogitSoftcapping is not null)
            throw new NotSupportedException("soft-capping is not exported for gemma3_text (llama.cpp's gemma3 graph has none)");
        if (gemma3.RopeLocalBaseFreq != 10_000)
            throw new NotSupportedException($"rope_local_base_freq {gemma3.RopeLocalBaseFreq} is not exported (llama.cpp's gemma3 fixes 10000)");
        if (c.Rope is { Kind: "linear" } linear)
        {
            yield return ($"{arch}.rope.scaling.type", "linear");
            yield return ($"{arch}.rope.scaling.factor", (float)linear.Factor!.Value);
        }
    }

    // llama.cpp's llama_token_type (gguf-py's TokenType)
    const int Normal = 1, Control = 3, UserDefined = 4, Unused = 5;

    /// <summary>The tokenizer.ggml.* keys: a byte-level BPE tokenizer.json, or the built-in byte tokenizer.</summary>
    static IEnumerable<(string, object)> Vocabulary(string folder, LlamaConfig config)
    {
        var tokenizer = ModelText.ForModel(folder).Tokenizer;
        string json = Path.Combine(folder, HfTokenizer.TokenizerFile);
        var (tokens, types, merges, pre) = tokenizer switch
        {
            HfTokenizer when File.Exists(json) => ByteLevelBpe(json, config.VocabSize),
            ByteTokenizer => BuiltInBytes(config.VocabSize),
            _ => throw new NotSupportedException($"its tokenizer ({tokenizer.GetType().Name}) is not exported as GGUF; byte-level BPE tokenizer.json folders are"),
        };
        int? bos = config.BosTokenId ?? tokenizer switch { HfTokenizer hf => hf.BosId, ByteTokenizer bytes => bytes.BosId, _ => null };
        int? eos = config.EosTokenId ?? (tokenizer.EosIds is [var end, ..] ? end : null);
        yield return ("tokenizer.ggml.model", "gpt2");
        yield return ("tokenizer.ggml.pre", pre);
        yield return ("tokenizer.ggml.tokens", tokens);
        yield return ("tokenizer.ggml.token_type", types);
        yield return ("tokenizer.ggml.merges", merges);
        if (bos is { } b) yield return ("tokenizer.ggml.bos_token_id", (uint)b);
        if (eos is { } e) yield return ("tokenizer.ggml.eos_token_id", (uint)e);
        // Whether a plain prompt starts with BOS, as this service's encoder does it (Llama 3's post-processor adds it).
        yield return ("tokenizer.ggml.add_bos_token", bos is { } first && tokenizer.Encode("", addSpecialTokens: true) is [var id, ..] && id == first);
    }

    /// <summary>
    /// The converter's <c>get_vocab_base</c>: every id below the model's vocabulary size, an added special token as
    /// CONTROL and other added ones USER_DEFINED, ids the tokenizer lacks as <c>[PAD{id}]</c>; merges as "a b".
    /// </summary>
    static (string[], int[], string[], string) ByteLevelBpe(string path, int vocabSize)
    {
        var root = JsonNode.Parse(File.ReadAllText(path))!;
        var model = root["model"]!;
        if (model["type"]?.GetValue<string>() != "BPE") throw new NotSupportedException("its tokenizer.json is not a BPE model");
        // Gemma's and Llama 2's: ▁ for spaces and <0xNN> byte pieces, which llama.cpp reads as its SentencePiece (llama) vocabulary.
        if (model["byte_fallback"]?.GetValue<bool>() == true)
            throw new NotSupportedException("its tokenizer.json is a SentencePiece-style BPE (byte_fallback, as Gemma's and Llama 2's), which is not exported as GGUF; byte-level BPE tokenizer.json folders are");
        var tokens = new string?[vocabSize];
        var types = new int[vocabSize];
        foreach (var (token, id) in model["vocab"]!.AsObject())
            Put(token, id!.GetValue<int>(), Normal);
        foreach (var added in root["added_tokens"]?.AsArray() ?? [])
            Put(added!["content"]!.GetValue<string>(), added["id"]!.GetValue<int>(), added["special"]?.GetValue<bool>() == true ? Control : UserDefined);
        for (int i = 0; i < vocabSize; i++)
            if (tokens[i] is null) (tokens[i], types[i]) = ($"[PAD{i}]", Unused);
        // Older files list merges as "a b", newer ones as ["a", "b"].
        var merges = model["merges"]!.AsArray().Select(m => m is JsonArray pair ? $"{pair[0]} {pair[1]}" : m!.GetValue<string>()).ToArray();
        return (Array.ConvertAll(tokens, t => t!), types, merges, PreTokenizer(root["pre_tokenizer"]));

        void Put(string token, int id, int type)
        {
            if (id >= vocabSize) throw new NotSupportedException($"its tokenizer has token id {id}, beyond the model's vocab_size {vocabSize}");
            (tokens[id], types[id]) = (token, type);
        }
    }

    /// <summary>
    /// llama.cpp's <c>tokenizer.ggml.pre</c> names the split regex it applies before BPE; it knows them by name, not by
    /// pattern, so an unknown pattern is refused rather than exported to split text differently.
    /// </summary>
    static string PreTokenizer(JsonNode? node)
    {
        const string llama3 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        const string qwen2 = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
        var steps = node?["type"]?.GetValue<string>() == "Sequence" ? node["pretokenizers"]!.AsArray().ToList() : [node];
        var regexes = steps.Where(s => s?["type"]?.GetValue<string>() == "Split").Select(s => s!["pattern"]?["Regex"]?.GetValue<string>()).ToList();
        bool gpt2Regex = steps.Any(s => s?["type"]?.GetValue<string>() == "ByteLevel" && s["use_regex"]?.GetValue<bool>() != false);
        return (regexes, gpt2Regex) switch
        {
            ([llama3], false) => "llama-bpe",
            ([qwen2], false) => "qwen2",
            ([], true) => "gpt-2",
            _ => throw new NotSupportedException("its tokenizer.json pre-tokenizer is not one llama.cpp knows by name (known: Llama 3's, Qwen2's, GPT-2's)"),
        };
    }

    /// <summary>
    /// The built-in byte tokenizer as a byte-level BPE vocabulary without merges: id b is byte b's byte-level character,
    /// so llama.cpp's BPE, having nothing to merge, gives the same ids; the specials are CONTROL tokens.
    /// </summary>
    static (string[], int[], string[], string) BuiltInBytes(int vocabSize)
    {
        var tokens = new string[vocabSize];
        var types = new int[vocabSize];
        var specials = new ByteTokenizer();
        for (int i = 0; i < vocabSize; i++)
            (tokens[i], types[i]) = i < 256 ? (ByteLevel.Encode[i].ToString(), Normal)
                : specials.IdToToken(i) is { } special ? (special, Control) : ($"[PAD{i}]", Unused);
        return (tokens, types, [], "default");
    }
}
