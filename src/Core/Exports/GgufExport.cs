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
public sealed record GgufArchitecture(string Name, bool PermuteQueryKey, Func<LlamaConfig, (IEnumerable<(string, object)> Metadata, IEnumerable<GgufTensor> Tensors)>? Extras = null);

/// <summary>
/// Writes a decoder model with its tokenizer as a GGUF file that llama.cpp (and Ollama) load, following llama.cpp's
/// <c>convert_hf_to_gguf.py</c>: the same tensor names, metadata keys, q/k permutation and tokenizer arrays.
/// </summary>
public static class GgufExport
{
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
        if (rope is not ("default" or "llama3" or "yarn") && !(rope == "longrope" && a == "phi3"))
            throw new NotSupportedException(rope switch
            {
                "dynamic" => "dynamic (NTK) rope scaling is not exported as GGUF: llama.cpp has no rope whose base grows with the sequence's length",
                "longrope" => $"longrope rope scaling is exported for phi3 only (llama.cpp reads rope_factors_long/short in its phi3 architecture, not in {a})",
                _ => $"rope scaling '{rope}' is not exported as GGUF (default, llama3, yarn and phi3's longrope are)",
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

        var tensors = ((IHuggingFaceModel)model).CheckpointTensors().Select(t =>
        {
            var p = t.Parameter;
            long[] shape = t.Transposed ? [.. p.shape.Reverse()] : p.shape;
            string gguf = TensorName(t.Key);
            return new GgufTensor(gguf, shape, TensorType(shape, type), () => Rows(arch, llama, gguf, t.Transposed ? p.detach().t() : p.detach()));
        }).ToList();
        if (factors is not null)
            tensors.Add(new GgufTensor("rope_freqs.weight", [factors.Length], GgufType.F32, () => tensor(factors)));
        if (extras is { } more) tensors.AddRange(more.Tensors);
        Gguf.Write(output, metadata, tensors);
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
        var metadata = new List<(string, object)>
        {
            ("general.architecture", arch.Name), ("general.type", "adapter"), ("general.name", name),
            ("general.file_type", (uint)FileType(type)), ("general.alignment", (uint)Gguf.Alignment),
            ("adapter.type", "lora"), ("adapter.lora.alpha", (float)(lora.Scaling * lora.Rank)),
        };
        var tensors = new List<GgufTensor>();
        foreach (var (path, w) in weights.OrderBy(w => w.Key, StringComparer.Ordinal))
        {
            string gguf = TensorName(path + ".weight");
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

    static string TensorName(string key)
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
            && LayerTensors.TryGetValue(string.Join('.', module), out var gguf))
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
