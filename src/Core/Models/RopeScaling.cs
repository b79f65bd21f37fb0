using System.Text.Json;
using System.Text.Json.Serialization;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>
/// <c>rope_scaling</c> (transformers 4.x) or <c>rope_parameters</c> (5.x, with <c>rope_theta</c>) of a Llama-family config.
/// The rope types are <see cref="RopeTypes.All"/>; a type not there, or a key a type does not read, is refused by name.
/// </summary>
public sealed record RopeScaling
{
    [JsonPropertyName("rope_theta")] public double? RopeTheta { get; init; }
    [JsonPropertyName("rope_type")] public string? RopeType { get; init; }
    /// <summary>The key older configs use for rope_type.</summary>
    [JsonPropertyName("type")] public string? Type { get; init; }
    [JsonPropertyName("factor")] public double? Factor { get; init; }
    [JsonPropertyName("low_freq_factor")] public double? LowFreqFactor { get; init; }
    [JsonPropertyName("high_freq_factor")] public double? HighFreqFactor { get; init; }
    [JsonPropertyName("original_max_position_embeddings")] public int? OriginalMaxPositionEmbeddings { get; init; }
    // YaRN's (and LongRoPE's attention_factor)
    [JsonPropertyName("attention_factor")] public double? AttentionFactor { get; init; }
    [JsonPropertyName("beta_fast")] public double? BetaFast { get; init; }
    [JsonPropertyName("beta_slow")] public double? BetaSlow { get; init; }
    [JsonPropertyName("mscale")] public double? Mscale { get; init; }
    [JsonPropertyName("mscale_all_dim")] public double? MscaleAllDim { get; init; }
    [JsonPropertyName("truncate")] public bool? Truncate { get; init; }
    // LongRoPE's per-frequency divisors, below and above the original context
    [JsonPropertyName("short_factor")] public double[]? ShortFactor { get; init; }
    [JsonPropertyName("long_factor")] public double[]? LongFactor { get; init; }
    /// <summary>Keys no rope type here reads: any is refused, since it may change the math.</summary>
    [JsonExtensionData] public Dictionary<string, JsonElement>? OtherKeys { get; init; }

    [JsonIgnore] public string Kind => RopeType ?? Type ?? "default";

    /// <summary>Equal when the JSON is (records compare arrays by reference).</summary>
    public bool SameAs(RopeScaling other) => JsonSerializer.Serialize(this) == JsonSerializer.Serialize(other);

    internal IEnumerable<string> Problems(string key, LlamaConfig config)
    {
        if (!RopeTypes.All.TryGetValue(Kind, out var type))
        {
            yield return $"{key} rope_type '{Kind}' is not supported (supported: {string.Join(", ", RopeTypes.All.Keys)})";
            yield break;
        }
        var given = new (string Name, bool Set)[]
        {
            ("factor", Factor is not null), ("low_freq_factor", LowFreqFactor is not null), ("high_freq_factor", HighFreqFactor is not null),
            ("original_max_position_embeddings", OriginalMaxPositionEmbeddings is not null), ("attention_factor", AttentionFactor is not null),
            ("beta_fast", BetaFast is not null), ("beta_slow", BetaSlow is not null), ("mscale", Mscale is not null),
            ("mscale_all_dim", MscaleAllDim is not null), ("truncate", Truncate is not null),
            ("short_factor", ShortFactor is not null), ("long_factor", LongFactor is not null),
        };
        foreach (var (name, _) in given.Where(g => g.Set && !type.Keys.Contains(g.Name)))
            yield return $"{key}.{name} is not read by rope_type '{Kind}' (it reads: {(type.Keys.Length == 0 ? "nothing" : string.Join(", ", type.Keys))})";
        foreach (string name in (OtherKeys ?? []).Keys)
            yield return $"{key}.{name} is not supported";
        foreach (string problem in type.Problems(this, config)) yield return $"{key}{problem}";
    }
}

/// <summary>What a rope type reads besides rope_scaling: the rotated dimensions, theta and the context lengths.</summary>
/// <param name="RotaryDim">How many leading dimensions of each head rotate (head_dim · partial_rotary_factor).</param>
/// <param name="Theta">rope_theta.</param>
/// <param name="MaxPositionEmbeddings">max_position_embeddings.</param>
/// <param name="OriginalMaxPositionEmbeddings">Phi-3's top-level original_max_position_embeddings (LongRoPE), if the config has it.</param>
public sealed record RopeShape(int RotaryDim, double Theta, int MaxPositionEmbeddings, int? OriginalMaxPositionEmbeddings = null);

/// <summary>
/// A rope type: the keys of rope_scaling it reads, their checks, and its inverse frequencies with the factor transformers
/// multiplies cos and sin by (its "attention scaling"), as a function of each row's current length.
/// </summary>
/// <param name="Keys">The rope_scaling keys it reads.</param>
/// <param name="Problems">What is wrong with them, each message starting where the key's name ends (".factor must ...").</param>
/// <param name="Frequencies">
/// (scaling, shape, length [rows] float64: one more than the row's largest position in this forward call) →
/// (inverse frequencies [rows or 1, rotary_dim / 2] float64, attention factor).
/// </param>
public sealed record RopeType(string[] Keys, Func<RopeScaling, LlamaConfig, IEnumerable<string>> Problems,
    Func<RopeScaling?, RopeShape, Tensor, (Tensor InverseFrequencies, double AttentionFactor)> Frequencies);

/// <summary>
/// The rope types of transformers' modeling_rope_utils.py, written from their equations. Where a type depends on the
/// sequence's length (dynamic, longrope), the length is per batch row and per forward call: 1 + the largest position
/// the row has in the call (a prompt's length at prefill, position + 1 at each decoding step), as transformers' generate
/// computes it from position_ids each call; keys already in the cache keep the rotation they were written with.
/// Per row rather than per batch, so a row's output does not depend on its batchmates.
/// </summary>
public static class RopeTypes
{
    public static readonly IReadOnlyDictionary<string, RopeType> All = new Dictionary<string, RopeType>(StringComparer.Ordinal)
    {
        ["default"] = new([], (_, _) => [], (_, shape, _) => (Base(shape).unsqueeze(0), 1)),
        // _compute_linear_scaling_rope_parameters: every frequency divided by factor.
        ["linear"] = new(["factor"], (s, _) => Factor(s), (s, shape, _) => ((Base(shape) / s!.Factor!.Value).unsqueeze(0), 1)),
        ["llama3"] = new(["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"], Llama3Problems,
            (s, shape, _) => (Llama3(Base(shape), s!).unsqueeze(0), 1)),
        ["dynamic"] = new(["factor", "original_max_position_embeddings"], DynamicProblems, Dynamic),
        ["yarn"] = new(["factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale", "mscale_all_dim", "truncate"],
            YarnProblems, (s, shape, _) => Yarn(s!, shape)),
        ["longrope"] = new(["factor", "original_max_position_embeddings", "attention_factor", "short_factor", "long_factor"], LongRopeProblems, LongRope),
    };

    /// <summary>θ^(−2i/d) for the rotated pairs i &lt; d/2 (d the rotary dimension) [d/2].</summary>
    static Tensor Base(RopeShape shape) => 1.0 / pow(shape.Theta, arange(0, shape.RotaryDim, 2, ScalarType.Float64) / shape.RotaryDim);

    static IEnumerable<string> Factor(RopeScaling s)
    {
        if (s.Factor is not > 0) yield return ".factor must be a positive number";
    }

    static IEnumerable<string> Llama3Problems(RopeScaling s, LlamaConfig _)
    {
        foreach (string problem in Factor(s)) yield return problem;
        if (s.OriginalMaxPositionEmbeddings is not > 0) yield return ".original_max_position_embeddings must be a positive integer";
        if (s.LowFreqFactor is not > 0 || s.HighFreqFactor is not { } high || high <= s.LowFreqFactor)
            yield return " needs low_freq_factor > 0 and high_freq_factor > low_freq_factor";
    }

    /// <summary>
    /// Llama 3.1's long-context frequencies: wavelengths longer than the original context / low_freq_factor are slowed by
    /// factor, those shorter than context / high_freq_factor kept, and the band between interpolated smoothly.
    /// </summary>
    static Tensor Llama3(Tensor invFreq, RopeScaling s)
    {
        double context = s.OriginalMaxPositionEmbeddings!.Value, factor = s.Factor!.Value, low = s.LowFreqFactor!.Value, high = s.HighFreqFactor!.Value;
        var wavelength = 2 * Math.PI / invFreq;                                                // [hd/2]
        var scaled = where(wavelength > context / low, invFreq / factor, invFreq);             // [hd/2]
        var smooth = (context / wavelength - low) / (high - low);                              // [hd/2]
        var smoothed = (1 - smooth) * scaled / factor + smooth * scaled;                       // [hd/2]
        var medium = wavelength.ge(context / high).logical_and(wavelength.le(context / low));   // [hd/2]
        return where(medium, smoothed, scaled);
    }

    static IEnumerable<string> DynamicProblems(RopeScaling s, LlamaConfig c)
    {
        if (s.Factor is not >= 1) yield return ".factor must be a number ≥ 1";
        if (c.RotaryDim <= 2) yield return $" needs a rotary dimension above 2 (it is {c.RotaryDim})";
        // transformers 4.x reads max_position_embeddings and ignores this key ("TODO"); refusing a different value
        // rather than guessing which one a later version reads.
        if (s.OriginalMaxPositionEmbeddings is { } original && original != c.MaxPositionEmbeddings)
            yield return $".original_max_position_embeddings {original} differs from max_position_embeddings {c.MaxPositionEmbeddings}; dynamic scaling reads the latter";
    }

    /// <summary>
    /// Dynamic NTK scaling (_compute_dynamic_ntk_parameters; "NTK-aware" scaling, the lineage YaRN, arXiv:2309.00071,
    /// §3.2 and §3.3 describes): past the trained context L, a row of length ℓ rotates with base
    /// θ' = θ · (factor · ℓ / L − (factor − 1))^(d / (d − 2)); up to L it is plain RoPE.
    /// </summary>
    static (Tensor, double) Dynamic(RopeScaling? s, RopeShape shape, Tensor length)
    {
        double factor = s!.Factor!.Value, trained = shape.MaxPositionEmbeddings, d = shape.RotaryDim;
        var l = length.clamp_min(trained);                                                            // [rows]
        var theta = shape.Theta * (factor * l / trained - (factor - 1)).pow(d / (d - 2));              // [rows]
        var exponent = arange(0, shape.RotaryDim, 2, ScalarType.Float64) / d;                          // [d/2]
        return (1.0 / theta.unsqueeze(1).pow(exponent.unsqueeze(0)), 1);                             // [rows, d/2]
    }

    static IEnumerable<string> YarnProblems(RopeScaling s, LlamaConfig c)
    {
        if (s.Factor is not >= 1) yield return ".factor must be a number ≥ 1";
        if (s.OriginalMaxPositionEmbeddings is <= 0) yield return ".original_max_position_embeddings must be a positive integer";
        if (s.AttentionFactor is <= 0) yield return ".attention_factor must be positive";
        if (s.BetaFast is <= 0 || s.BetaSlow is <= 0) yield return ".beta_fast and .beta_slow must be positive";
        if ((s.BetaFast ?? 32) < (s.BetaSlow ?? 1)) yield return ".beta_fast must not be below beta_slow";
    }

    /// <summary>
    /// YaRN (YaRN: Efficient Context Window Extension of Large Language Models, https://arxiv.org/abs/2309.00071, §3.2
    /// "NTK-by-parts" and §3.4): with r(i) = L / (2π θ^(2i/d)) rotations of pair i over the original context L, pairs
    /// with r &gt; beta_fast keep their frequency, pairs with r &lt; beta_slow are divided by factor, and between the two
    /// dimension bounds (floored/ceiled unless truncate is false) a linear ramp mixes them; cos and sin are multiplied
    /// by attention_factor, by default 0.1 ln(factor) + 1 (the paper's √(1/t)), or mscale's ratio where both are given.
    /// </summary>
    static (Tensor, double) Yarn(RopeScaling s, RopeShape shape)
    {
        double factor = s.Factor!.Value, d = shape.RotaryDim, original = s.OriginalMaxPositionEmbeddings ?? shape.MaxPositionEmbeddings;
        static double Mscale(double scale, double m) => scale <= 1 ? 1 : 0.1 * m * Math.Log(scale) + 1;
        double attention = s.AttentionFactor
            ?? (s.Mscale is { } m && m != 0 && s.MscaleAllDim is { } all && all != 0 ? Mscale(factor, m) / Mscale(factor, all) : Mscale(factor, 1));
        // The dimension whose pair turns `rotations` times over the original context.
        double Dimension(double rotations) => d * Math.Log(original / (rotations * 2 * Math.PI)) / (2 * Math.Log(shape.Theta));
        double low = Dimension(s.BetaFast ?? 32), high = Dimension(s.BetaSlow ?? 1);
        if (s.Truncate ?? true) (low, high) = (Math.Floor(low), Math.Ceiling(high));
        (low, high) = (Math.Max(low, 0), Math.Min(high, d - 1));
        if (low == high) high += 0.001;
        var plain = Base(shape);                                                                      // [d/2]
        var ramp = ((arange(0, shape.RotaryDim / 2, ScalarType.Float64) - low) / (high - low)).clamp(0, 1);
        var keep = 1 - ramp;                                                                          // 1: extrapolate (keep), 0: interpolate
        return ((plain / factor * (1 - keep) + plain * keep).unsqueeze(0), attention);
    }

    /// <summary>LongRoPE's original context: Phi-3's top-level key, or rope_parameters' (5.x), or max_position_embeddings.</summary>
    static int LongRopeOriginal(RopeScaling s, RopeShape shape) =>
        shape.OriginalMaxPositionEmbeddings ?? s.OriginalMaxPositionEmbeddings ?? shape.MaxPositionEmbeddings;

    static IEnumerable<string> LongRopeProblems(RopeScaling s, LlamaConfig c)
    {
        int half = c.RotaryDim / 2;
        foreach (var (name, factors) in new[] { ("short_factor", s.ShortFactor), ("long_factor", s.LongFactor) })
            if (factors is null || factors.Length != half || factors.Any(f => !(f > 0)))
                yield return $".{name} must be {half} positive numbers (rotary dimension {c.RotaryDim} / 2), got {factors?.Length.ToString() ?? "none"}";
        var shape = c.RopeShape;
        if (shape.OriginalMaxPositionEmbeddings is { } top && s.OriginalMaxPositionEmbeddings is { } inner && top != inner)
            yield return $".original_max_position_embeddings {inner} differs from the config's {top}";
        if (LongRopeOriginal(s, shape) <= 0) yield return ".original_max_position_embeddings must be positive";
        if (s.AttentionFactor is <= 0) yield return ".attention_factor must be positive";
        if (shape.OriginalMaxPositionEmbeddings is null && s.OriginalMaxPositionEmbeddings is null && s.AttentionFactor is null && s.Factor is not > 0)
            yield return ".factor must be a positive number (or give original_max_position_embeddings)";
    }

    /// <summary>
    /// LongRoPE (LongRoPE: Extending LLM Context Window Beyond 2 Million Tokens, https://arxiv.org/abs/2402.13753):
    /// pair i's frequency θ^(−2i/d) / λᵢ with λ the searched short_factor while a row is within the original context L
    /// and long_factor past it; cos and sin scaled by attention_factor, by default √(1 + ln s / ln L) with
    /// s = max_position_embeddings / L (Phi-3) or factor, 1 when s ≤ 1.
    /// </summary>
    static (Tensor, double) LongRope(RopeScaling? scaling, RopeShape shape, Tensor length)
    {
        var s = scaling!;
        int original = LongRopeOriginal(s, shape);
        double factor = shape.OriginalMaxPositionEmbeddings is not null || s.OriginalMaxPositionEmbeddings is not null
            ? (double)shape.MaxPositionEmbeddings / original : s.Factor ?? 1;
        double attention = s.AttentionFactor ?? (factor <= 1 ? 1 : Math.Sqrt(1 + Math.Log(factor) / Math.Log(original)));
        var plain = Base(shape).unsqueeze(0);                                                          // [1, d/2]
        var isLong = length.gt(original).unsqueeze(1);                                                 // [rows, 1]
        var divisors = where(isLong, tensor(s.LongFactor!).unsqueeze(0), tensor(s.ShortFactor!).unsqueeze(0));   // [rows, d/2]
        return (plain / divisors, attention);
    }
}
