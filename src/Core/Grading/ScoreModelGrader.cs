using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace AdapterService.Core.Grading;

/// <summary>
/// <c>score_model</c>: a judge model (a base or fine-tuned model this service serves) reads its own templated messages and
/// replies with a score. The score is read robustly: a JSON reply's <c>result</c> (OpenAI's score-model output field) or
/// <c>score</c>, else the first number in the text; it is clamped to <c>range</c> (default [0, 1]); a reply with no number
/// scores the range's low end.
/// </summary>
public sealed partial class ScoreModelGrader : Grader
{
    static readonly string[] Roles = ["system", "developer", "user", "assistant"];

    public required string Model { get; init; }
    public required IReadOnlyList<(string Role, Template Content)> Messages { get; init; }
    public (double Low, double High) Range { get; init; } = (0, 1);
    public JudgeSampling Sampling { get; init; } = new(null, null, null, null);
    public string ModelPath { get; init; } = "model";

    internal static Grader Parse(JsonElement json, string path, string name)
    {
        string model = Graders.Json.String(json, path, "model");
        var input = Graders.Json.Required(json, path, "input");
        if (input.ValueKind != JsonValueKind.Array || input.GetArrayLength() == 0)
            throw new GraderException($"{path}.input must be a non-empty array of messages.", path + ".input");
        var messages = new List<(string, Template)>();
        int i = 0;
        foreach (var message in input.EnumerateArray())
        {
            string at = $"{path}.input[{i++}]";
            if (message.ValueKind != JsonValueKind.Object) throw new GraderException($"{at} must be a message object.", at);
            string role = Graders.Json.Choice(message, at, "role", Roles);
            messages.Add((role, Template.Parse(Content(Graders.Json.Required(message, at, "content"), at + ".content"), at + ".content")));
        }
        var range = (0.0, 1.0);
        if (json.TryGetProperty("range", out var r) && r.ValueKind != JsonValueKind.Null)
        {
            if (r.ValueKind != JsonValueKind.Array || r.GetArrayLength() != 2 || r.EnumerateArray().Any(v => v.ValueKind != JsonValueKind.Number)
                || !(r[0].GetDouble() < r[1].GetDouble()))
                throw new GraderException($"{path}.range must be [low, high] with low < high.", path + ".range");
            range = (r[0].GetDouble(), r[1].GetDouble());
        }
        var sampling = new JudgeSampling(null, null, null, null);
        if (json.TryGetProperty("sampling_params", out var s) && s.ValueKind == JsonValueKind.Object)
        {
            string at = path + ".sampling_params";
            double? maxTokens = Graders.Json.OptionalNumber(s, at, "max_completions_tokens") ?? Graders.Json.OptionalNumber(s, at, "max_tokens");
            if (maxTokens is { } m && (m < 1 || m != Math.Floor(m))) throw new GraderException($"{at}.max_completions_tokens must be a positive integer.", at + ".max_completions_tokens");
            double? temperature = Graders.Json.OptionalNumber(s, at, "temperature");
            if (temperature is < 0 or > 2) throw new GraderException($"{at}.temperature must be between 0 and 2.", at + ".temperature");
            double? topP = Graders.Json.OptionalNumber(s, at, "top_p");
            if (topP is <= 0 or > 1) throw new GraderException($"{at}.top_p must be in (0, 1].", at + ".top_p");
            sampling = new JudgeSampling(temperature, topP, (int?)maxTokens, (long?)Graders.Json.OptionalNumber(s, at, "seed"));
        }
        return new ScoreModelGrader { Name = name, Model = model, Messages = messages, Range = range, Sampling = sampling, ModelPath = path + ".model" };
    }

    /// <summary>A message's text: a string, or content parts of <c>input_text</c> / <c>output_text</c> (images and audio are refused).</summary>
    static string Content(JsonElement content, string path)
    {
        if (content.ValueKind == JsonValueKind.String) return content.GetString()!;
        var parts = content.ValueKind == JsonValueKind.Array ? content.EnumerateArray().ToList() : [content];
        return string.Concat(parts.Select((part, i) =>
        {
            string at = content.ValueKind == JsonValueKind.Array ? $"{path}[{i}]" : path;
            if (part.ValueKind == JsonValueKind.String) return part.GetString();
            if (part.ValueKind != JsonValueKind.Object) throw new GraderException($"{at} must be text or a content part.", at);
            string type = Graders.Json.Choice(part, at, "type", ["input_text", "output_text"]);
            return Graders.Json.String(part, at, "text");
        }));
    }

    public override IEnumerable<Template> Templates => Messages.Select(m => m.Content);
    public override IEnumerable<(string Model, string Path)> JudgeModels => [(Model, ModelPath)];

    public override async Task<double> GradeAsync(GradingInput input, CancellationToken cancel = default)
    {
        var judge = input.Judge ?? throw new InvalidOperationException("a score_model grader needs a judge");
        var messages = Messages.Select(m => new JudgeMessage(m.Role, m.Content.Render(input))).ToList();
        return ReadScore(await judge.ReplyAsync(Model, messages, Sampling, cancel), Range);
    }

    /// <summary>The score in a judge's reply, clamped to <paramref name="range"/>; the low end when it holds no number.</summary>
    public static double ReadScore(string reply, (double Low, double High) range)
    {
        double? score = null;
        try
        {
            var json = JsonDocument.Parse(reply.Trim()).RootElement;
            if (json.ValueKind == JsonValueKind.Number) score = json.GetDouble();
            else if (json.ValueKind == JsonValueKind.Object)
                foreach (var key in new[] { "result", "score", "grade" })
                    if (json.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number) { score = v.GetDouble(); break; }
        }
        catch (JsonException) { }
        if (score is null && Number().Match(reply) is { Success: true } m) score = double.Parse(m.Value, CultureInfo.InvariantCulture);
        return score is { } s && double.IsFinite(s) ? Math.Clamp(s, range.Low, range.High) : range.Low;
    }

    [GeneratedRegex(@"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")]
    private static partial Regex Number();
}
