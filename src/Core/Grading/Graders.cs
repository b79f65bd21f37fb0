using System.Globalization;
using System.Text.Json;

namespace AdapterService.Core.Grading;

/// <summary>
/// Grader JSON → typed <see cref="Grader"/>: a registry of parsers by OpenAI's <c>type</c> name. Types OpenAI has that this
/// service refuses (<c>python</c> runs user code; <c>label_model</c> is for evals' labels, not a numeric grade) are rows with
/// their reason, so the error says why. Every error is a <see cref="GraderException"/> naming the JSON path.
/// </summary>
public static class Graders
{
    delegate Grader Parser(JsonElement json, string path, string name);

    static readonly Dictionary<string, Parser> Parsers = new()
    {
        ["string_check"] = StringCheckGrader.Parse,
        ["text_similarity"] = TextSimilarityGrader.Parse,
        ["score_model"] = ScoreModelGrader.Parse,
        ["multi"] = MultiGrader.Parse,
    };

    static readonly Dictionary<string, string> Refused = new()
    {
        ["python"] = "python graders run user code, which this service does not do; use string_check, text_similarity, score_model or multi",
        ["label_model"] = "label_model graders give labels, not the numeric grade a fine-tuning job needs; use score_model",
    };

    public static IReadOnlyCollection<string> Types => Parsers.Keys;

    /// <summary>The grader <paramref name="json"/> describes; <paramref name="path"/> is its JSON path in the request.</summary>
    public static Grader Parse(JsonElement json, string path)
    {
        if (json.ValueKind != JsonValueKind.Object) throw new GraderException($"{path} must be a grader object.", path);
        string type = Json.String(json, path, "type");
        if (Refused.TryGetValue(type, out var reason)) throw new GraderException($"The {type} grader is not supported: {reason}.", path + ".type");
        if (!Parsers.TryGetValue(type, out var parse))
            throw new GraderException($"Unknown grader type '{type}'; supported: {string.Join(", ", Types.Select(t => $"'{t}'"))}.", path + ".type");
        return parse(json, path, Json.OptionalString(json, path, "name") ?? "");
    }

    /// <summary>Reading a grader's fields with errors that name their path.</summary>
    internal static class Json
    {
        public static JsonElement Required(JsonElement json, string path, string key) =>
            json.TryGetProperty(key, out var value) && value.ValueKind != JsonValueKind.Null ? value
                : throw new GraderException($"Missing required parameter: '{path}.{key}'.", $"{path}.{key}");

        public static string String(JsonElement json, string path, string key)
        {
            var value = Required(json, path, key);
            return value.ValueKind == JsonValueKind.String ? value.GetString()! : throw new GraderException($"{path}.{key} must be a string.", $"{path}.{key}");
        }

        public static string? OptionalString(JsonElement json, string path, string key) =>
            json.TryGetProperty(key, out var value) && value.ValueKind != JsonValueKind.Null ? String(json, path, key) : null;

        public static double? OptionalNumber(JsonElement json, string path, string key)
        {
            if (!json.TryGetProperty(key, out var value) || value.ValueKind == JsonValueKind.Null) return null;
            return value.ValueKind == JsonValueKind.Number && value.TryGetDouble(out var d) && double.IsFinite(d) ? d
                : throw new GraderException($"{path}.{key} must be a number.", $"{path}.{key}");
        }

        public static string Choice(JsonElement json, string path, string key, IEnumerable<string> allowed)
        {
            string value = String(json, path, key);
            return allowed.Contains(value) ? value
                : throw new GraderException($"{path}.{key} is '{value}'; one of {string.Join(", ", allowed.Select(a => $"'{a}'"))} is needed.", $"{path}.{key}");
        }

        public static string Format(double d) => d.ToString(CultureInfo.InvariantCulture);
    }
}

/// <summary><c>string_check</c>: 1 when the rendered input and reference pass the operation, else 0.</summary>
public sealed class StringCheckGrader : Grader
{
    /// <summary>eq and ne compare exactly; like is "contains" (case-sensitive), ilike the same ignoring case.</summary>
    static readonly Dictionary<string, Func<string, string, bool>> Operations = new()
    {
        ["eq"] = (input, reference) => input == reference,
        ["ne"] = (input, reference) => input != reference,
        ["like"] = (input, reference) => input.Contains(reference, StringComparison.Ordinal),
        ["ilike"] = (input, reference) => input.Contains(reference, StringComparison.OrdinalIgnoreCase),
    };

    public required Template Input { get; init; }
    public required Template Reference { get; init; }
    public required string Operation { get; init; }

    internal static Grader Parse(JsonElement json, string path, string name) => new StringCheckGrader
    {
        Name = name,
        Input = Template.Parse(Graders.Json.String(json, path, "input"), path + ".input"),
        Reference = Template.Parse(Graders.Json.String(json, path, "reference"), path + ".reference"),
        Operation = Graders.Json.Choice(json, path, "operation", Operations.Keys),
    };

    public override IEnumerable<Template> Templates => [Input, Reference];

    public override Task<double> GradeAsync(GradingInput input, CancellationToken cancel = default) =>
        Task.FromResult(Operations[Operation](Input.Render(input), Reference.Render(input)) ? 1.0 : 0.0);
}

/// <summary><c>text_similarity</c>: a <see cref="TextMetrics"/> score of the rendered input against the reference.</summary>
public sealed class TextSimilarityGrader : Grader
{
    public required Template Input { get; init; }
    public required Template Reference { get; init; }
    public required string Metric { get; init; }
    /// <summary>OpenAI's <c>pass_threshold</c> (evals count a grade at or above it as a pass); the grade itself is the score.</summary>
    public double? PassThreshold { get; init; }

    internal static Grader Parse(JsonElement json, string path, string name)
    {
        string metric = Graders.Json.String(json, path, "evaluation_metric");
        if (TextMetrics.Unavailable.TryGetValue(metric, out var reason))
            throw new GraderException($"The evaluation_metric '{metric}' is not supported: {reason}.", path + ".evaluation_metric");
        if (!TextMetrics.All.ContainsKey(metric))
            throw new GraderException($"Unknown evaluation_metric '{metric}'; supported: {string.Join(", ", TextMetrics.All.Keys.Select(k => $"'{k}'"))}.", path + ".evaluation_metric");
        return new TextSimilarityGrader
        {
            Name = name, Metric = metric,
            Input = Template.Parse(Graders.Json.String(json, path, "input"), path + ".input"),
            Reference = Template.Parse(Graders.Json.String(json, path, "reference"), path + ".reference"),
            PassThreshold = Graders.Json.OptionalNumber(json, path, "pass_threshold"),
        };
    }

    public override IEnumerable<Template> Templates => [Input, Reference];

    public override Task<double> GradeAsync(GradingInput input, CancellationToken cancel = default) =>
        Task.FromResult(TextMetrics.All[Metric](Input.Render(input), Reference.Render(input)));
}
