using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// Gemma 3's text model (transformers' modeling_gemma3.py, Gemma3ForCausalLM): Gemma 2's decoder (<see cref="Gemma2Config"/>)
/// with RMSNorms (1 + weight) on each query and key head before the rotation (<c>q_norm</c>, <c>k_norm</c>), no soft-capping
/// in the released configs, five local layers to one global (layer i is global when (i + 1) % sliding_window_pattern is 0,
/// or as layer_types says), and local layers rotating with their own base <c>rope_local_base_freq</c> and no scaling while
/// global layers use <c>rope_theta</c> and <c>rope_scaling</c>.
/// </summary>
/// <remarks>
/// A multimodal Gemma 3 folder (<c>model_type</c> gemma3, Gemma3ForConditionalGeneration, e.g. gemma-3-4b-it) loads as this
/// text model: <see cref="Gemma3TextConfig.FromMultimodal"/> reads its <c>text_config</c>, and the checkpoint's
/// <c>language_model.model.*</c> tensors (or <c>model.language_model.*</c>, as transformers ≥ 4.52 saves them) fill
/// <c>model.*</c>; the SigLIP vision tower and the multimodal projector are skipped, so images are not supported.
/// </remarks>
public sealed class Gemma3ForCausalLM(Gemma3TextConfig config) : LlamaForCausalLM(config)
{
    /// <summary>Where Gemma3ForConditionalGeneration checkpoints keep the language model (transformers' _checkpoint_conversion_mapping), old and new.</summary>
    static readonly (string Prefix, string Canonical)[] LanguageModel =
        [("language_model.model.", "model."), ("model.language_model.", "model."), ("language_model.lm_head.", "lm_head.")];

    /// <summary>Its vision tower and projector, which this text model skips.</summary>
    static readonly string[] Vision = ["vision_tower.", "multi_modal_projector.", "model.vision_tower.", "model.multi_modal_projector."];

    public override string? CanonicalKey(string key)
    {
        if (Vision.Any(p => key.StartsWith(p, StringComparison.Ordinal))) return null;
        foreach (var (prefix, canonical) in LanguageModel)
            if (key.StartsWith(prefix, StringComparison.Ordinal)) return base.CanonicalKey(canonical + key[prefix.Length..]);
        return base.CanonicalKey(key);
    }
}

public sealed record Gemma3TextConfig : Gemma2Config
{
    public Gemma3TextConfig()
    {
        ModelType = "gemma3_text";
        Architectures = [nameof(Gemma3ForCausalLM)];
        // transformers' Gemma3TextConfig defaults where Gemma 2's differ.
        (RopeTheta, MaxPositionEmbeddings, AttnLogitSoftcapping, FinalLogitSoftcapping) = (1_000_000, 131_072, null, null);
    }

    [JsonPropertyName("rope_local_base_freq")] public double RopeLocalBaseFreq { get; init; } = 10_000;
    /// <summary>Every this many layers, one global; read when layer_types is absent (transformers 4.50–4.52 configs).</summary>
    [JsonPropertyName("sliding_window_pattern")] public int? SlidingWindowPattern { get; init; } = 6;

    public override bool IsSliding(int layer) =>
        LayerTypes is { } types ? types[layer] == "sliding_attention" : (layer + 1) % (SlidingWindowPattern ?? 6) != 0;

    public override (RopeShape Shape, RopeScaling? Scaling) LayerRope(int layer) =>
        IsSliding(layer) ? (RopeShape with { Theta = RopeLocalBaseFreq }, null) : (RopeShape, Rope);

    [JsonIgnore] public override bool QkNorm => true;
    [JsonIgnore] public override Type ModelClass => typeof(Gemma3ForCausalLM);

    public override nn.Module<Tensor, Tensor> CreateModel() => new Gemma3ForCausalLM(this);

    protected override IEnumerable<string> Problems()
    {
        foreach (string problem in base.Problems()) yield return problem;
        // transformers 5 writes rope_parameters per layer type ({"sliding_attention": {..}, "full_attention": {..}}), which
        // the flat RopeScaling would misread; refused rather than silently run with the default rope.
        if (RopeParameters is not null)
            yield return "rope_parameters is not supported for gemma3_text (transformers 5's per-layer-type form); write rope_theta, rope_local_base_freq and rope_scaling";
        if (RopeLocalBaseFreq <= 0) yield return $"rope_local_base_freq is {RopeLocalBaseFreq}; it must be positive";
        if (SlidingWindowPattern is <= 0) yield return $"sliding_window_pattern is {SlidingWindowPattern}; it must be positive";
    }

    /// <summary>
    /// transformers' Gemma3TextConfig defaults for the keys a multimodal config's text_config may leave out (gemma-3-4b-it's
    /// names only its sizes, rope_scaling and sliding_window) that this service otherwise requires.
    /// </summary>
    static readonly Dictionary<string, JsonNode> TextDefaults = new()
    {
        ["vocab_size"] = 262_208, ["hidden_size"] = 2304, ["intermediate_size"] = 9216, ["num_hidden_layers"] = 26,
        ["num_attention_heads"] = 8, ["num_key_value_heads"] = 4, ["head_dim"] = 256, ["bos_token_id"] = 2, ["eos_token_id"] = 1, ["pad_token_id"] = 0,
    };

    /// <summary>
    /// The text model's config.json of a multimodal Gemma 3 config (model_type gemma3): its text_config over transformers'
    /// defaults, with the outer token ids and dtype where text_config has none. The vision_config is not read.
    /// </summary>
    /// <exception cref="JsonException">text_config is missing or is not Gemma 3's text model.</exception>
    public static string FromMultimodal(JsonElement root)
    {
        if (!root.TryGetProperty("text_config", out var text) || text.ValueKind != JsonValueKind.Object)
            throw new JsonException("model_type 'gemma3' (Gemma3ForConditionalGeneration) needs a text_config object; its text model is what this service runs");
        var config = (JsonObject)JsonNode.Parse(text.GetRawText())!;
        if (config["model_type"] is { } type && type.GetValueKind() == JsonValueKind.String && type.GetValue<string>() != "gemma3_text")
            throw new JsonException($"text_config.model_type '{type.GetValue<string>()}' is not supported (Gemma 3's is gemma3_text)");
        foreach (string key in new[] { "bos_token_id", "eos_token_id", "pad_token_id", "torch_dtype", "dtype" })
            if (!config.ContainsKey(key) && root.TryGetProperty(key, out var outer)) config[key] = JsonNode.Parse(outer.GetRawText());
        foreach (var (key, value) in TextDefaults)
            if (!config.ContainsKey(key)) config[key] = value.DeepClone();
        config["model_type"] = "gemma3_text";
        config["architectures"] = new JsonArray(nameof(Gemma3ForCausalLM));
        return config.ToJsonString();
    }
}
