using AdapterService.Core.Adapters;
using AdapterService.Core.Exports;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using LLama;
using LLama.Common;
using LLama.Native;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;
using LoraAdapter = AdapterService.Core.Adapters.LoraAdapter;

namespace AdapterService.Core.Tests.Exports;

/// <summary>
/// GGUF exports checked against llama.cpp itself (LLamaSharp's CPU build): the same token ids through our forward and
/// through llama.cpp, compared at every position and along a greedy continuation, for random-weight models whose
/// embeddings are N(0, 1) so the logits are far from uniform.
/// </summary>
public sealed class GgufExportTests : IDisposable
{
    // Max |logit difference| / max |logit| over every compared position, the measured value (docs/MODELS.md) with headroom.
    const double F32Tolerance = 1e-5, F16Tolerance = 3e-3, Bf16Tolerance = 2e-2, Q8Tolerance = 5e-2;
    /// <summary>Gemma in f32: llama.cpp's CPU GELU looks gelu up in an f16 table (input and output rounded to f16), 4.4e-4 / 6.5e-5 measured.</summary>
    const double GemmaF32Tolerance = 1e-3;
    /// <summary>
    /// Gemma 2 in q8_0: N(0, 1) embeddings times √hidden feed the binding soft caps large activations, so the 8-bit
    /// weights' rounding shows more than elsewhere (5.5e-2 measured; gemma3_text 7.7e-3).
    /// </summary>
    const double GemmaQ8Tolerance = 8e-2;
    /// <summary>
    /// Gemma with the strong random LoRA: its large activations scale that f16 GELU rounding (1.75e-3 measured for gemma3;
    /// with our GELU rounded through f16 the same way, 4.2e-4).
    /// </summary>
    const double GemmaLoraTolerance = 3e-3;
    // A strong random adapter (B·A as large as the weights) over the f32 base: measured up to 7.5e-6 (mistral), which is f32
    // rounding: our own forward with the adapter beside the weights and with it merged differ by as much (7.6e-6).
    const double LoraTolerance = 2e-5;

    readonly ITestOutputHelper output;
    readonly string folder = Directory.CreateTempSubdirectory("gguf-").FullName;

    public GgufExportTests(ITestOutputHelper output) => this.output = output;

    public void Dispose() => Directory.Delete(folder, recursive: true);

    static GgufExportTests()
    {
        TorchRuntime.EnsureReady();
        NativeLibraryConfig.All.WithLogCallback((_, _) => { });   // llama.cpp's loading chatter
    }

    [Fact]
    public void BuiltInByteTokenizerModelAgreesWithLlamaCppInF32()
    {
        using var scope = NewDisposeScope();
        using var model = TinyLlama.Create(seed: 3);
        ModelFolder.Save(model, folder);
        var ids = new List<int> { ByteTokenizer.Begin };
        ids.AddRange(new ByteTokenizer().Encode("Hello, GGUF!"));
        string gguf = Export(model, GgufType.F32);
        Compare(model, gguf, ids, F32Tolerance, steps: 8);
        using var weights = Load(gguf);
        // llama.cpp's BPE with no merges splits text into the same byte ids as the built-in tokenizer.
        Assert.Equal(ids.Skip(1), weights.Tokenize("Hello, GGUF!", add_bos: false, special: false, System.Text.Encoding.UTF8).Select(t => (int)t));
    }

    [Theory]
    [InlineData(GgufType.F32, F32Tolerance)]
    [InlineData(GgufType.F16, F16Tolerance)]
    [InlineData(GgufType.BF16, Bf16Tolerance)]
    [InlineData(GgufType.Q8_0, Q8Tolerance)]
    public void Llama3TokenizerModelAgreesWithLlamaCpp(GgufType type, double tolerance)
    {
        using var scope = NewDisposeScope();
        using var model = Llama3Shaped();
        string text = "The quick brown fox jumps over 123 lazy dogs.\n";
        var tokenizer = TextTokenizers.Read(folder);
        var ids = tokenizer.Encode(text, addSpecialTokens: true).ToList();
        string gguf = Export(model, type);
        Compare(model, gguf, ids, tolerance, steps: 4);
        using var weights = Load(gguf);
        Assert.Equal(ids, weights.Tokenize(text, add_bos: true, special: false, System.Text.Encoding.UTF8).Select(t => (int)t));
    }

    /// <summary>
    /// The families on Llama's decoder, hidden 64, 2 layers, GQA 4/2, with their real tokenizers: qwen2 (q/k/v biases, tied
    /// head) and qwen3 (q/k norms, head_dim 32 ≠ 64 / 4, its own head) with Qwen3's 151,669-token BPE (pre-tokenizer
    /// qwen2); mistral (GGUF llama) with Llama 3.1's, since the test files hold no Mistral tokenizer. llama.cpp's llama
    /// architecture ignores Mistral's sliding window, so the prompt and continuation stay inside it (4096). Measured
    /// (docs/MODELS.md): f32 ≤ 9.1e-7, f16 ≤ 9.4e-4, bf16 ≤ 7.0e-3, q8_0 ≤ 2.3e-2, as Llama's.
    /// phi3 (fused attn_qkv and ffn_up, 3/4 of each head rotated, tied head, LongRoPE) twice: with an original context of
    /// 4096, so llama.cpp's 64-position context and our short sequences both take the short factors, and of 16 with a
    /// prompt past it, so both take the long ones (llama.cpp chooses by its context size, we by the sequence's length).
    /// smollm3 (4 layers, the 4th NoPE) with Llama 3.1's tokenizer; qwen2-yarn with YaRN factor 4 as Qwen2.5's card
    /// configures it. Each f32 case also checks that its feature shows in llama.cpp's logits.
    /// </summary>
    [Theory]
    [InlineData("qwen2", GgufType.F32, F32Tolerance)]
    [InlineData("qwen2", GgufType.F16, F16Tolerance)]
    [InlineData("qwen2", GgufType.BF16, Bf16Tolerance)]
    [InlineData("qwen2", GgufType.Q8_0, Q8Tolerance)]
    [InlineData("qwen3", GgufType.F32, F32Tolerance)]
    [InlineData("qwen3", GgufType.F16, F16Tolerance)]
    [InlineData("qwen3", GgufType.BF16, Bf16Tolerance)]
    [InlineData("qwen3", GgufType.Q8_0, Q8Tolerance)]
    [InlineData("mistral", GgufType.F32, F32Tolerance)]
    [InlineData("mistral", GgufType.F16, F16Tolerance)]
    [InlineData("mistral", GgufType.BF16, Bf16Tolerance)]
    [InlineData("mistral", GgufType.Q8_0, Q8Tolerance)]
    [InlineData("phi3", GgufType.F32, F32Tolerance)]
    [InlineData("phi3", GgufType.F16, F16Tolerance)]
    [InlineData("phi3-long", GgufType.F32, F32Tolerance)]
    [InlineData("smollm3", GgufType.F32, F32Tolerance)]
    [InlineData("smollm3", GgufType.F16, F16Tolerance)]
    [InlineData("qwen2-yarn", GgufType.F32, F32Tolerance)]
    [InlineData("qwen3_moe", GgufType.F32, F32Tolerance)]
    [InlineData("qwen3_moe", GgufType.F16, F16Tolerance)]
    public void DecoderFamilyAgreesWithLlamaCpp(string family, GgufType type, double tolerance)
    {
        // f32 with the family's real tokenizer, whose ids llama.cpp must produce too; the other types test the weights'
        // encoding, so the byte vocabulary (264 tokens) keeps each case near a second.
        bool realVocabulary = type == GgufType.F32;
        using var scope = NewDisposeScope();
        using var model = FamilyShaped(family, realVocabulary);
        string text = family == "phi3-long" ? "The quick brown fox jumps over 123 lazy dogs, then 456 sleepy cats watch it twice.\n" : "The quick brown fox jumps over 123 lazy dogs.\n";
        var ids = TextTokenizers.Read(folder).Encode(text, addSpecialTokens: true).ToList();
        string gguf = Export(model, type);
        output.WriteLine($"{family} {type}");
        Compare(model, gguf, ids, tolerance, steps: 4);
        using var weights = Load(gguf);
        Assert.Equal(ids, weights.Tokenize(text, add_bos: true, special: false, System.Text.Encoding.UTF8).Select(t => (int)t));
        // The feature under test shows: the same weights without it (plain rope, or SmolLM3 rotating in every layer) give
        // logits llama.cpp does not.
        LlamaConfig? without = model.Config switch
        {
            SmolLM3Config smol => smol with { NoRopeLayers = [1, 1, 1, 1] },
            Qwen3MoeConfig moe => moe with { NormTopkProb = false },   // llama.cpp renormalises the top-k weights as Qwen3-30B-A3B's config says
            { Rope: not null } c => c with { RopeScaling = null },
            _ => null,
        };
        if (without is null || type != GgufType.F32) return;
        using var plain = (LlamaForCausalLM)without.CreateModel();
        plain.load_state_dict(model.state_dict());
        plain.eval();
        using var context = weights.CreateContext(Parameters(gguf));
        double error = MaxRelativeError(Logits(plain, ids), LlamaCppLogits(context, ids, 0));
        output.WriteLine($"{family} without its feature: max |Δ| / max |logit| = {error:E2}");
        Assert.True(error > 1e-3, $"{error:E2}");
    }

    /// <summary>
    /// What GET /v1/adapters/{id}/export?format=gguf writes, for each family on Llama's decoder: the adapter GGUF loaded by
    /// llama.cpp as a LoRA over the base's f32 GGUF gives our logits with the adapter applied. Every projection is adapted,
    /// so qwen2's biased q/k/v, qwen3's normed q/k and mistral's permuted q/k rows (B permuted like the weight) are all exercised.
    /// </summary>
    [Theory]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("mistral")]
    [InlineData("phi3")]
    [InlineData("smollm3")]
    [InlineData("gemma2")]
    [InlineData("gemma3_text")]
    [InlineData("qwen3_moe")]
    public void FamilyLoraAdapterAgreesWithLlamaCppOverTheBase(string family)
    {
        using var scope = NewDisposeScope();
        bool gemma = family.StartsWith("gemma", StringComparison.Ordinal);
        using var model = gemma ? GemmaShaped(GemmaConfig(family)) : FamilyShaped(family, realVocabulary: false);
        string baseGguf = Export(model, GgufType.F32);
        var ids = TextTokenizers.Read(folder).Encode("The quick brown fox jumps over 123 lazy dogs.\n", addSpecialTokens: true).ToList();
        var plain = Logits(model, ids);
        // On Phi-3 the fused qkv_proj and gate_up_proj (attn_qkv, ffn_up in the GGUF).
        var config = new LoraConfig
        {
            Rank = 4, Alpha = 8,
            // On Qwen3 MoE the attention only: LoRA on experts has no llama.cpp adapter form (ExpertLoraAdapterIsRefused).
            TargetModules = family switch
            {
                "phi3" => ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"],
                "qwen3_moe" => ["q_proj", "k_proj", "v_proj", "o_proj"],
                _ => ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
            },
        };
        using var adapter = LoraAdapter.Create(model, config, seed: 1);
        var (adapted, error) = AdapterThroughLlamaCpp(model, adapter, config, baseGguf, ids, plain);
        output.WriteLine($"{family} LoRA adapter GGUF over the f32 base: max |Δ| / max |logit| = {error:E2}");
        // The bound: f32 rounding, which the random adapter's large activations make grow with depth; our own forward with
        // the adapter beside the weights and merged into them (equal in exact arithmetic) shows how much (2.5e-5 on
        // smollm3's 4 layers, under 1e-5 on the 2-layer families). Gemma's is llama.cpp's f16 GELU table (GemmaLoraTolerance).
        adapter.Merge(model);
        double own = MaxRelativeError(adapted, Logits(model, ids));
        output.WriteLine($"{family} ours merged vs unmerged: {own:E2}");
        Assert.True(error <= Math.Max(gemma ? GemmaLoraTolerance : LoraTolerance, 2 * own), $"{error:E2} (ours merged vs unmerged {own:E2})");
    }

    /// <summary>LoRA on a mixture's experts is refused as a llama.cpp adapter GGUF, naming the layer (the merged model exports).</summary>
    [Fact]
    public void ExpertLoraAdapterIsRefused()
    {
        using var scope = NewDisposeScope();
        using var model = FamilyShaped("qwen3_moe", realVocabulary: false);
        var config = new LoraConfig { Rank = 2, Alpha = 4, TargetModules = ["down_proj"] };
        using var adapter = LoraAdapter.Create(model, config, seed: 1);
        var error = Assert.Throws<NotSupportedException>(() => GgufExport.WriteLoraAdapter(Stream.Null, model, config, adapter.Weights(), "test", GgufType.F32));
        Assert.Contains("LoRA on a mixture's experts (model.layers.0.mlp.experts.0.down_proj) is not exported", error.Message);
    }

    /// <summary>
    /// As convert_hf_to_gguf.py (LlamaModel) writes Mistral, the GGUF has no sliding window, and llama.cpp's llama architecture
    /// attends to every position (writing <c>llama.attention.sliding_window</c> was tried: llama.cpp ignores it too). So a
    /// windowed model's export agrees with ours only while a sequence fits the window: with a window of 4 and a 12-token
    /// prompt, llama.cpp gives the full-attention logits of the same weights, not the windowed ones.
    /// </summary>
    [Fact]
    public void LlamaCppAttendsPastMistralsSlidingWindow()
    {
        using var scope = NewDisposeScope();
        using var full = FamilyShaped("mistral");
        using var windowed = (LlamaForCausalLM)(((MistralConfig)full.Config) with { SlidingWindow = 4 }).CreateModel();
        windowed.load_state_dict(full.state_dict());
        windowed.eval();
        var ids = TextTokenizers.Read(folder).Encode("The quick brown fox jumps over 123 lazy dogs.\n", addSpecialTokens: true).ToList();
        string gguf = Export(windowed, GgufType.F32);
        using var weights = Load(gguf);
        using var context = weights.CreateContext(Parameters(gguf));
        var theirs = LlamaCppLogits(context, ids, 0);
        double toFull = MaxRelativeError(Logits(full, ids), theirs), toWindowed = MaxRelativeError(Logits(windowed, ids), theirs);
        output.WriteLine($"mistral, window 4, {ids.Count} positions: llama.cpp vs full attention {toFull:E2}, vs the window {toWindowed:E2}");
        Assert.True(toFull <= F32Tolerance, $"{toFull:E2}");
        Assert.True(toWindowed > 0.01, $"{toWindowed:E2}");
    }

    /// <summary>
    /// Gemma 2 (2 layers: local, global) and Gemma 3 (6 layers: five local, one global, linear rope scaling on the global
    /// one, q/k norms), hidden 64, head_dim 32, a window of 4 that the 14-token prompt and its continuation run past, Gemma 2's
    /// soft caps low enough to bind; the built-in byte tokenizer (logits only). llama.cpp's gemma2/gemma3 graphs must give
    /// our logits: (1 + w) norms exported as 1 + w, √hidden embeddings, the windows and the local rope base included.
    /// </summary>
    [Theory]
    [InlineData("gemma2", GgufType.F32, GemmaF32Tolerance)]
    [InlineData("gemma2", GgufType.F16, F16Tolerance)]
    [InlineData("gemma2", GgufType.BF16, Bf16Tolerance)]
    [InlineData("gemma2", GgufType.Q8_0, GemmaQ8Tolerance)]
    [InlineData("gemma3_text", GgufType.F32, GemmaF32Tolerance)]
    [InlineData("gemma3_text", GgufType.F16, F16Tolerance)]
    [InlineData("gemma3_text", GgufType.BF16, Bf16Tolerance)]
    [InlineData("gemma3_text", GgufType.Q8_0, GemmaQ8Tolerance)]
    public void GemmaAgreesWithLlamaCpp(string family, GgufType type, double tolerance)
    {
        using var scope = NewDisposeScope();
        using var model = GemmaShaped(GemmaConfig(family));
        Compare(model, Export(model, type), GemmaPrompt, tolerance, steps: 4);
    }

    /// <summary>What llama.cpp's gemma2/gemma3 graphs fix and a config could vary is refused by key, not exported to compute otherwise.</summary>
    [Theory]
    [InlineData("gemma2-uncapped", "without attn_logit_softcapping and final_logit_softcapping")]
    [InlineData("query_pre_attn_scalar", "query_pre_attn_scalar 24 is not exported")]
    [InlineData("layer_types", "local/global layer pattern differs")]
    [InlineData("rope_local_base_freq", "rope_local_base_freq 100 is not exported")]
    [InlineData("final_logit_softcapping", "soft-capping is not exported for gemma3_text")]
    public void GemmaConfigsLlamaCppWouldComputeOtherwiseAreRefused(string change, string message)
    {
        using var scope = NewDisposeScope();
        var gemma3 = (Gemma3TextConfig)GemmaConfig("gemma3_text");
        LlamaConfig config = change switch
        {
            "gemma2-uncapped" => GemmaConfig(change),
            "query_pre_attn_scalar" => gemma3 with { QueryPreAttnScalar = 24 },
            "layer_types" => gemma3 with { LayerTypes = ["sliding_attention", "full_attention", "sliding_attention", "full_attention", "sliding_attention", "full_attention"] },
            "rope_local_base_freq" => gemma3 with { RopeLocalBaseFreq = 100 },
            _ => gemma3 with { FinalLogitSoftcapping = 30 },
        };
        using var model = GemmaShaped(config);
        var error = Assert.Throws<NotSupportedException>(() => GgufExport.Write(Stream.Null, model, folder, "test", GgufType.F32, template: null));
        Assert.Contains(message, error.Message);
    }

    /// <summary>A SentencePiece-style tokenizer.json (Gemma 3's kind: BPE with byte_fallback, ▁ for spaces) is refused by what it is.</summary>
    [Fact]
    public void ASentencePieceStyleTokenizerJsonIsRefused()
    {
        using var scope = NewDisposeScope();
        using var model = GemmaShaped(GemmaConfig("gemma3_text"));
        File.WriteAllText(Path.Combine(folder, "tokenizer.json"), """
            {"version": "1.0", "added_tokens": [], "normalizer": {"type": "Replace", "pattern": {"String": " "}, "content": "▁"},
             "pre_tokenizer": {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false},
             "post_processor": null, "decoder": {"type": "Sequence", "decoders": [{"type": "ByteFallback"}, {"type": "Fuse"}]},
             "model": {"type": "BPE", "byte_fallback": true, "fuse_unk": true, "unk_token": "<unk>",
                       "vocab": {"<unk>": 0, "<0x61>": 1, "a": 2, "▁": 3, "▁a": 4}, "merges": [["▁", "a"]]}}
            """);
        var error = Assert.Throws<NotSupportedException>(() => GgufExport.Write(Stream.Null, model, folder, "test", GgufType.F32, template: null));
        Assert.Contains("SentencePiece-style BPE", error.Message);
    }

    static List<int> GemmaPrompt => [ByteTokenizer.Begin, .. new ByteTokenizer().Encode("Gemma's window")];

    /// <summary>
    /// The agreement above is llama.cpp computing each Gemma feature, not the feature having no effect: with it changed to
    /// its neutral value, our logits of the same weights are far from llama.cpp's.
    /// </summary>
    [Theory]
    [InlineData("gemma2", "sliding_window")]
    [InlineData("gemma2", "attn_logit_softcapping")]
    [InlineData("gemma2", "final_logit_softcapping")]
    [InlineData("gemma3_text", "sliding_window")]
    [InlineData("gemma3_text", "rope_local_base_freq")]
    [InlineData("gemma3_text", "rope_scaling")]
    public void LlamaCppComputesEachGemmaFeature(string family, string key)
    {
        using var scope = NewDisposeScope();
        var config = GemmaConfig(family);
        using var model = GemmaShaped(config);
        LlamaConfig neutral = key switch
        {
            "sliding_window" => (Gemma2Config)config with { SlidingWindow = null },
            "attn_logit_softcapping" => (Gemma2Config)config with { AttnLogitSoftcapping = null },
            "final_logit_softcapping" => (Gemma2Config)config with { FinalLogitSoftcapping = null },
            "rope_local_base_freq" => (Gemma3TextConfig)config with { RopeLocalBaseFreq = config.Theta },
            _ => (Gemma3TextConfig)config with { RopeScaling = null },
        };
        using var changed = (LlamaForCausalLM)neutral.CreateModel();
        changed.load_state_dict(model.state_dict());
        changed.eval();
        string gguf = Export(model, GgufType.F32);
        using var weights = Load(gguf);
        using var context = weights.CreateContext(Parameters(gguf));
        var theirs = LlamaCppLogits(context, GemmaPrompt, 0);
        double toOurs = MaxRelativeError(Logits(model, GemmaPrompt), theirs), toChanged = MaxRelativeError(Logits(changed, GemmaPrompt), theirs);
        output.WriteLine($"{family} vs llama.cpp: {toOurs:E2}; without {key}: {toChanged:E2}");
        Assert.True(toOurs <= GemmaF32Tolerance && toChanged > 10 * GemmaF32Tolerance, $"{toOurs:E2}, {toChanged:E2}");
    }

    static LlamaConfig GemmaConfig(string family) => family.StartsWith("gemma2", StringComparison.Ordinal)
        ? new Gemma2Config
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDimension = 32, QueryPreAttnScalar = 32, RopeTheta = 10000, SlidingWindow = 4, MaxPositionEmbeddings = 64,
            // without caps, the file has no softcapping keys: llama.cpp must then not cap
            AttnLogitSoftcapping = family == "gemma2" ? 2 : null, FinalLogitSoftcapping = family == "gemma2" ? 5 : null,
        }
        : new Gemma3TextConfig
        {
            VocabSize = 300, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 6, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            HeadDimension = 32, QueryPreAttnScalar = 32, RopeTheta = 1000, SlidingWindow = 4, MaxPositionEmbeddings = 64,
            RopeScaling = new RopeScaling { RopeType = "linear", Factor = 8 },
        };

    /// <summary>
    /// Randomizes <paramref name="adapter"/> (so it matters), attaches it, writes its f32 adapter GGUF and loads that over
    /// <paramref name="baseGguf"/> in llama.cpp: our adapted logits and their max relative difference from llama.cpp's.
    /// </summary>
    (float[][] Adapted, double Error) AdapterThroughLlamaCpp(LlamaForCausalLM model, LoraAdapter adapter, LoraConfig config, string baseGguf, List<int> ids, float[][] plain)
    {
        TinyLlama.Randomize(adapter, seed: 9);
        adapter.Attach(model);
        string adapterGguf = Path.Combine(folder, "adapter.gguf");
        using (var file = File.Create(adapterGguf))
            GgufExport.WriteLoraAdapter(file, model, config, adapter.Weights(), "test-lora", GgufType.F32);
        var adapted = Logits(model, ids);
        Assert.True(MaxRelativeError(adapted, plain) > 0.1);   // the adapter matters, so agreeing means llama.cpp applied it

        using var weights = Load(baseGguf);
        using var context = weights.CreateContext(Parameters(baseGguf));
        var lora = weights.NativeHandle.LoadLoraFromFile(adapterGguf);
        context.NativeHandle.SetLoraAdapters([(lora, 1f)]);
        return (adapted, MaxRelativeError(adapted, LlamaCppLogits(context, ids, 0)));
    }

    /// <summary>A Gemma with seeded random weights, effective norm scales 1 + w from 0.5 to 1.5, saved with no tokenizer (the built-in bytes).</summary>
    LlamaForCausalLM GemmaShaped(LlamaConfig config)
    {
        var model = (LlamaForCausalLM)config.CreateModel();
        using var g = new Generator(12);
        using (no_grad())
        using (NewDisposeScope())
            foreach (var (name, p) in model.named_parameters())
            {
                if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.uniform_(-0.5, 0.5, g);
                else if (name == "model.embed_tokens.weight") p.normal_(0, 1, g);
                else p.normal_(0, 1 / Math.Sqrt(p.shape[1]), g);
            }
        foreach (var p in model.parameters()) p.requires_grad = false;
        model.eval();
        ModelFolder.Save(model, folder);
        return model;
    }

    [Fact]
    public void Llama3RopeScalingIsRefusedForQwen()
    {
        using var scope = NewDisposeScope();
        var scaling = new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 16 };
        using var model = (LlamaForCausalLM)new Qwen2Config
        {
            VocabSize = 264, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 1, NumAttentionHeads = 4, NumKeyValueHeads = 2, RopeScaling = scaling,
        }.CreateModel();
        var error = Assert.Throws<NotSupportedException>(() => GgufExport.Write(Stream.Null, model, folder, "test", GgufType.F32, template: null));
        Assert.Contains("rope_freqs", error.Message);
    }

    /// <summary>What llama.cpp would not run as the model is refused by name before anything is written.</summary>
    [Theory]
    [InlineData("dynamic", "dynamic (NTK) rope scaling is not exported")]
    [InlineData("yarn-attention-factor", "yarn rope scaling with attention_factor")]
    [InlineData("longrope-llama", "longrope rope scaling is exported for phi3 only")]
    [InlineData("smollm3-nope", "smollm3 with layer 1 NoPE is not exported")]
    [InlineData("phi3-attention-factor", "longrope attention_factor 2 is not exported")]
    [InlineData("qwen3_moe-dense", "qwen3_moe with a dense layer (1, by mlp_only_layers or decoder_sparse_step) is not exported")]
    [InlineData("qwen3_moe-unnormalised", "qwen3_moe with norm_topk_prob false is not exported")]
    public void WhatLlamaCppCannotRunIsRefused(string name, string message)
    {
        using var scope = NewDisposeScope();
        LlamaConfig shape = new() { VocabSize = 264, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2 };
        double[] factors = [1, 1, 1, 1];
        LlamaConfig config = name switch
        {
            "dynamic" => shape with { RopeScaling = new RopeScaling { RopeType = "dynamic", Factor = 2 } },
            "yarn-attention-factor" => shape with { RopeScaling = new RopeScaling { RopeType = "yarn", Factor = 4, AttentionFactor = 1.5 } },
            "longrope-llama" => shape with { RopeScaling = new RopeScaling { RopeType = "longrope", Factor = 4, ShortFactor = factors, LongFactor = factors } },
            "smollm3-nope" => new SmolLM3Config
            {
                VocabSize = 264, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, NoRopeLayers = [1, 0],
            },
            "qwen3_moe-dense" or "qwen3_moe-unnormalised" => new Qwen3MoeConfig
            {
                VocabSize = 264, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, NumExperts = 4,
                NumExpertsPerTok = 2, MoeIntermediateSize = 16, NormTopkProb = name == "qwen3_moe-dense", MlpOnlyLayers = name == "qwen3_moe-dense" ? [1] : [],
            },
            _ => new Phi3Config
            {
                VocabSize = 264, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2, MaxPositionEmbeddings = 8192,
                OriginalMaxPositionEmbeddings = 4096, RopeScaling = new RopeScaling { RopeType = "longrope", AttentionFactor = 2, ShortFactor = factors, LongFactor = factors },
            },
        };
        using var model = (LlamaForCausalLM)config.CreateModel();
        var error = Assert.Throws<NotSupportedException>(() => GgufExport.Write(Stream.Null, model, folder, "test", GgufType.F32, template: null));
        Assert.Contains(message, error.Message);
    }

    [Fact]
    public void ServiceTrainedBpeTokenizerModelAgreesWithLlamaCpp()
    {
        // fortunes-llama-demo's kind of tokenizer: BpeTrainer's byte-level BPE with GPT-2's pre-tokenizer (llama.cpp's "gpt-2").
        using var scope = NewDisposeScope();
        var corpus = Enumerable.Range(0, 50).Select(i => $"Fortune {i}: the early bird gets the worm, but the second mouse gets the cheese.").ToList();
        var vocabulary = BpeTrainer.Train(corpus, 320, ["<|endoftext|>"]);
        vocabulary.Save(folder, "<|endoftext|>", "<|endoftext|>", maxLength: 64);
        var config = TinyLlama.Config with { VocabSize = 320, BosTokenId = 0, EosTokenId = 0 };
        using var model = TinyLlama.Create(seed: 4, config);
        ModelFolder.Save(model, folder);
        string text = "The early bird, 42 worms and a second mouse!";
        var ids = TextTokenizers.Read(folder).Encode(text, addSpecialTokens: false).ToList();
        string gguf = Export(model, GgufType.F32);
        Compare(model, gguf, ids, F32Tolerance, steps: 4);
        using var weights = Load(gguf);
        Assert.Equal(ids, weights.Tokenize(text, add_bos: false, special: false, System.Text.Encoding.UTF8).Select(t => (int)t));
    }

    /// <summary>
    /// The prompts above reach too few positions for Llama 3.1's slowed low frequencies to show in the logits, so the
    /// rope_freqs divisors are checked against our rotary frequencies directly: plain / scaled, per frequency.
    /// </summary>
    [Fact]
    public void RopeFreqsAreTheDivisorsOfOurLlama3Frequencies()
    {
        using var scope = NewDisposeScope();
        var scaling = new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 8192 };
        var config = TinyLlama.Config with { HiddenSize = 512, NumAttentionHeads = 4, RopeTheta = 500000, RopeScaling = scaling };
        double[] Frequencies(RopeScaling? s)
        {
            var (cos, sin) = new RotaryEmbedding((config with { RopeScaling = s }).RopeShape, s).Angles(tensor(new long[] { 1 }, [1, 1]));
            return atan2(sin, cos).flatten()[..(config.HeadDim / 2)].to_type(ScalarType.Float64).data<double>().ToArray();   // position 1: the frequencies
        }
        var (plain, scaled) = (Frequencies(null), Frequencies(scaling));
        var factors = GgufExport.RopeFactors(config)!;
        Assert.Contains(factors, f => f == 8);   // head_dim 128 reaches the slowed band
        for (int i = 0; i < factors.Length; i++)
            Assert.Equal(plain[i] / scaled[i], factors[i], 1e-4 * factors[i]);
    }

    [Fact]
    public void TrainedLoraMergedAgreesWithTheAdapterServedUnmerged()
    {
        using var scope = NewDisposeScope();
        using var model = TinyLlama.Create(seed: 5);
        ModelFolder.Save(model, folder);
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }, seed: 1);
        var ids = new List<int> { ByteTokenizer.Begin };
        ids.AddRange(new ByteTokenizer().Encode("fine-tuned"));
        var plain = Logits(model, ids);
        adapter.Attach(model);
        Train(model, adapter, ids, steps: 10);
        var adapted = Logits(model, ids);                                  // the adapter beside the weights, as the service serves it
        Assert.True(MaxRelativeError(adapted, plain) > 0.01);              // trained enough to matter
        adapter.Merge(model);
        string gguf = Export(model, GgufType.F32);
        using var weights = Load(gguf);
        using var context = weights.CreateContext(Parameters(gguf));
        double error = MaxRelativeError(adapted, LlamaCppLogits(context, ids, 0));
        output.WriteLine($"merged LoRA f32: max |Δ| / max |logit| = {error:E2}");
        Assert.True(error <= F32Tolerance, $"{error:E2}");
    }

    [Fact]
    public void UnmergedLoraAdapterAgreesWithLlamaCppOverTheBase()
    {
        using var scope = NewDisposeScope();
        using var model = TinyLlama.Create(seed: 8);
        ModelFolder.Save(model, folder);
        string baseGguf = Export(model, GgufType.F32);
        var ids = new List<int> { ByteTokenizer.Begin };
        ids.AddRange(new ByteTokenizer().Encode("an adapter"));
        var plain = Logits(model, ids);
        // rsLoRA's scaling, so the alpha written (scaling · r) is not simply lora_alpha.
        var config = new LoraConfig { Rank = 4, Alpha = 8, UseRsLora = true, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] };
        using var adapter = LoraAdapter.Create(model, config, seed: 1);
        var (_, error) = AdapterThroughLlamaCpp(model, adapter, config, baseGguf, ids, plain);
        output.WriteLine($"LoRA adapter GGUF over the f32 base: max |Δ| / max |logit| = {error:E2}");
        Assert.True(error <= F32Tolerance, $"{error:E2}");
    }

    /// <summary>A few Adam steps from PEFT's initialisation (B = 0) towards predicting <paramref name="ids"/> shifted by one.</summary>
    static void Train(LlamaForCausalLM model, LoraAdapter adapter, List<int> ids, int steps)
    {
        foreach (var p in adapter.Parameters()) p.requires_grad = true;
        using var optimizer = optim.Adam(adapter.Parameters(), 0.01);
        var input = tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Count]);
        for (int step = 0; step < steps; step++)
        {
            using var scope = NewDisposeScope();
            optimizer.zero_grad();
            var logits = model.forward(input.narrow(1, 0, ids.Count - 1));
            nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]), input.narrow(1, 1, ids.Count - 1).view(-1)).backward();
            optimizer.step();
        }
        foreach (var p in adapter.Parameters()) p.requires_grad = false;
    }

    /// <summary>A Llama 3.1-shaped body scaled down (hidden 64, 2 layers, GQA, llama3 rope scaling) with its real 128,256-token vocabulary.</summary>
    LlamaForCausalLM Llama3Shaped()
    {
        string real = Text.HfReference.RealFiles("llama3_1");
        foreach (string file in Directory.GetFiles(real)) File.Copy(file, Path.Combine(folder, Path.GetFileName(file)));
        var config = new LlamaConfig
        {
            VocabSize = 128256, HiddenSize = 64, IntermediateSize = 128, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            MaxPositionEmbeddings = 131072, RopeTheta = 500000, RmsNormEps = 1e-5, BosTokenId = 128000, EosTokenId = 128001,
            RopeScaling = new RopeScaling { RopeType = "llama3", Factor = 8, LowFreqFactor = 1, HighFreqFactor = 4, OriginalMaxPositionEmbeddings = 8192 },
        };
        var model = TinyLlama.Create(seed: 7, config);
        ModelFolder.Save(model, folder);
        return model;
    }

    /// <summary>A real config's features scaled down, seeded random weights: norms away from 1, biases away from 0, so both matter.</summary>
    /// <remarks>
    /// With <paramref name="realVocabulary"/> false, the folder has no tokenizer files, so the built-in byte tokenizer's
    /// 264 ids stand in: a tenth of the time of a 150k-token vocabulary, for checks of the weights alone.
    /// </remarks>
    LlamaForCausalLM FamilyShaped(string family, bool realVocabulary = true)
    {
        if (realVocabulary)
        {
            string real = Text.HfReference.RealFiles(family is "mistral" or "smollm3" ? "llama3_1" : "qwen3");
            foreach (string file in Directory.GetFiles(real)) File.Copy(file, Path.Combine(folder, Path.GetFileName(file)));
        }
        double[] shorts = [1, 1.05, 1.2, 1.5, 2, 3], longs = [1, 1.5, 3, 6, 12, 24];
        LlamaConfig config = family switch
        {
            // Qwen2.5 0.5B's: q/k/v biases, tied head, theta 1e6.
            "qwen2" => new Qwen2Config { TieWordEmbeddings = true, RopeTheta = 1000000, RmsNormEps = 1e-6, BosTokenId = 151643, EosTokenId = 151645 },
            // Qwen3's: q/k norms, head_dim 32 where hidden / heads is 16.
            "qwen3" => new Qwen3Config { HeadDimension = 32, RopeTheta = 1000000, RmsNormEps = 1e-6, BosTokenId = 151643, EosTokenId = 151645 },
            // Mistral 7B v0.1's window.
            "mistral" => new MistralConfig { SlidingWindow = 4096, RopeTheta = 10000, RmsNormEps = 1e-5, BosTokenId = 128000, EosTokenId = 128001 },
            // Phi-4-mini's: partial_rotary_factor 0.75 (12 of 16 dimensions), tied head, LongRoPE over 4096 of 131072, window 262144.
            "phi3" => new Phi3Config
            {
                PartialRotaryFactor = 0.75, TieWordEmbeddings = true, RopeTheta = 10000, BosTokenId = 151643, EosTokenId = 151645, SlidingWindow = 262144,
                OriginalMaxPositionEmbeddings = 4096, RopeScaling = new RopeScaling { Type = "longrope", ShortFactor = shorts, LongFactor = longs },
            },
            "phi3-long" => new Phi3Config
            {
                PartialRotaryFactor = 0.75, TieWordEmbeddings = true, RopeTheta = 10000, BosTokenId = 151643, EosTokenId = 151645,
                OriginalMaxPositionEmbeddings = 16, RopeScaling = new RopeScaling { Type = "longrope", ShortFactor = shorts, LongFactor = longs },
            },
            // Qwen3-30B-A3B's: Qwen3's attention, every layer a mixture, top-k renormalised; 4 experts, top-2, width 32 here.
            "qwen3_moe" => new Qwen3MoeConfig
            {
                HeadDimension = 32, RopeTheta = 1000000, RmsNormEps = 1e-6, BosTokenId = 151643, EosTokenId = 151645,
                NumExperts = 4, NumExpertsPerTok = 2, MoeIntermediateSize = 32, NormTopkProb = true,
            },
            "smollm3" => new SmolLM3Config { NumHiddenLayers = 4, RopeTheta = 2000000, RmsNormEps = 1e-6, BosTokenId = 128000, EosTokenId = 128001 },
            "qwen2-yarn" => new Qwen2Config
            {
                TieWordEmbeddings = true, RopeTheta = 1000000, RmsNormEps = 1e-6, BosTokenId = 151643, EosTokenId = 151645,
                RopeScaling = new RopeScaling { Type = "yarn", Factor = 4, OriginalMaxPositionEmbeddings = 32768 },
            },
            _ => throw new ArgumentException(family),
        };
        if (!realVocabulary) config = config with { BosTokenId = ByteTokenizer.Begin, EosTokenId = ByteTokenizer.End };
        config = config with
        {
            VocabSize = !realVocabulary ? ByteTokenizer.VocabSize : family is "mistral" or "smollm3" ? 128256 : 151936, HiddenSize = 64, IntermediateSize = 128,
            NumHiddenLayers = family == "smollm3" ? 4 : 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            MaxPositionEmbeddings = family switch { "phi3" => 131072, "phi3-long" => 64, "qwen2-yarn" => 131072, _ => 32768 },
        };
        var model = (LlamaForCausalLM)config.CreateModel();
        using var g = new Generator(11);
        using (no_grad())
        using (NewDisposeScope())
            foreach (var (name, p) in model.named_parameters())
            {
                if (name.EndsWith("norm.weight", StringComparison.Ordinal)) p.uniform_(0.5, 1.5, g);
                else if (p.dim() == 1) p.normal_(0, 0.5, g);
                else if (name == "model.embed_tokens.weight") p.normal_(0, 1, g);
                else p.normal_(0, 1 / Math.Sqrt(p.shape[1]), g);
            }
        foreach (var p in model.parameters()) p.requires_grad = false;
        model.eval();
        ModelFolder.Save(model, folder);
        return model;
    }

    string Export(LlamaForCausalLM model, GgufType type)
    {
        string path = Path.Combine(folder, $"model-{type}.gguf");
        using (var file = File.Create(path))
            GgufExport.Write(file, model, folder, "test", type, template: null);
        return path;
    }

    /// <summary>Every position's logits of the prompt, then a greedy continuation one token at a time through llama.cpp's KV cache.</summary>
    void Compare(LlamaForCausalLM model, string gguf, List<int> prompt, double tolerance, int steps)
    {
        using var weights = Load(gguf);
        using var context = weights.CreateContext(Parameters(gguf));
        var ours = Logits(model, prompt);
        var theirs = LlamaCppLogits(context, prompt, 0);
        double worst = MaxRelativeError(ours, theirs);
        var ids = new List<int>(prompt);
        int clear = 0;
        for (int step = 0; step < steps; step++)
        {
            var last = ours[^1];
            int next = ArgMax(last);
            // Where our top-1 leads by more than two errors' worth, llama.cpp's top-1 cannot differ unless it is wrong.
            if (Margin(last) > 2 * tolerance)
            {
                clear++;
                Assert.Equal(next, ArgMax(theirs[^1]));
            }
            ids.Add(next);
            ours = Logits(model, ids)[^1..];
            theirs = LlamaCppLogits(context, [next], ids.Count - 1);
            worst = Math.Max(worst, MaxRelativeError(ours, theirs));
        }
        output.WriteLine($"{Path.GetFileName(gguf)}: {prompt.Count} positions + {steps} greedy steps ({clear} with a clear top-1), max |Δ| / max |logit| = {worst:E2}");
        Assert.True(worst <= tolerance, $"max |Δ| / max |logit| = {worst:E2} exceeds {tolerance:E2}");
    }

    /// <summary>An f32 KV cache and no flash attention: llama.cpp's CPU flash attention rounds through f16 (5e-4 relative error measured).</summary>
    static ModelParams Parameters(string gguf) => new(gguf)
    {
        ContextSize = 64, BatchSize = 64, UBatchSize = 64, GpuLayerCount = 0, Threads = 2, BatchThreads = 2,
        TypeK = GGMLType.GGML_TYPE_F32, TypeV = GGMLType.GGML_TYPE_F32, FlashAttention = false,
    };

    static LLamaWeights Load(string gguf) => LLamaWeights.LoadFromFile(Parameters(gguf));

    /// <summary>Our logits [position][vocab] for the whole sequence.</summary>
    static float[][] Logits(LlamaForCausalLM model, List<int> ids)
    {
        using var scope = NewDisposeScope();
        using var noGrad = no_grad();
        var logits = model.forward(tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Count]))[0];
        return Enumerable.Range(0, ids.Count).Select(i => logits[i].data<float>().ToArray()).ToArray();
    }

    /// <summary>llama.cpp's logits for tokens fed at positions from <paramref name="start"/>, one row per token.</summary>
    static float[][] LlamaCppLogits(LLamaContext context, List<int> ids, int start)
    {
        var batch = new LLamaBatch();
        for (int i = 0; i < ids.Count; i++) batch.Add((LLamaToken)ids[i], start + i, LLamaSeqId.Zero, logits: true);
        Assert.Equal(DecodeResult.Ok, context.Decode(batch));
        return Enumerable.Range(0, ids.Count).Select(i => context.NativeHandle.GetLogitsIth(i).ToArray()).ToArray();
    }

    static double MaxRelativeError(float[][] ours, float[][] theirs)
    {
        Assert.Equal(ours.Length, theirs.Length);
        double diff = 0, scale = 0;
        for (int p = 0; p < ours.Length; p++)
            for (int v = 0; v < ours[p].Length; v++)
            {
                diff = Math.Max(diff, Math.Abs(ours[p][v] - theirs[p][v]));
                scale = Math.Max(scale, Math.Abs(ours[p][v]));
            }
        return diff / scale;
    }

    static int ArgMax(float[] logits) => Array.IndexOf(logits, logits.Max());

    static double Margin(float[] logits)
    {
        var top = logits.OrderDescending().Take(2).ToArray();
        return (top[0] - top[1]) / logits.Max(Math.Abs);
    }
}
