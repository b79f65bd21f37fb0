using System.Text.Json;

namespace AdapterService.Core.Grading;

/// <summary>
/// <c>multi</c>: named graders, each graded, combined by <c>calculate_output</c>, an arithmetic formula over their names
/// (<see cref="Formula"/>). <c>graders</c> is a map of name → grader (OpenAI's guide), or one grader object (its SDK types),
/// which is then known by its <c>name</c>.
/// </summary>
public sealed class MultiGrader : Grader
{
    public required IReadOnlyDictionary<string, Grader> Graders { get; init; }
    public required Formula Output { get; init; }

    internal static Grader Parse(JsonElement json, string path, string name)
    {
        var graders = Grading.Graders.Json.Required(json, path, "graders");
        if (graders.ValueKind != JsonValueKind.Object || !graders.EnumerateObject().Any())
            throw new GraderException($"{path}.graders must be an object of name → grader.", path + ".graders");
        var parsed = new Dictionary<string, Grader>();
        if (graders.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String)
        {
            var one = Grading.Graders.Parse(graders, path + ".graders");
            if (one.Name.Length == 0) throw new GraderException($"{path}.graders.name is needed for calculate_output to name it.", path + ".graders.name");
            parsed[one.Name] = one;
        }
        else
            foreach (var property in graders.EnumerateObject())
                parsed[property.Name] = Grading.Graders.Parse(property.Value, $"{path}.graders.{property.Name}");
        string formula = Grading.Graders.Json.String(json, path, "calculate_output");
        return new MultiGrader { Name = name, Graders = parsed, Output = Formula.Parse(formula, parsed.Keys.ToHashSet(), path + ".calculate_output") };
    }

    public override IEnumerable<Template> Templates => Graders.Values.SelectMany(g => g.Templates);
    public override IEnumerable<(string Model, string Path)> JudgeModels => Graders.Values.SelectMany(g => g.JudgeModels);

    public override async Task<double> GradeAsync(GradingInput input, CancellationToken cancel = default)
    {
        var grades = new Dictionary<string, double>();
        foreach (var (name, grader) in Graders) grades[name] = await grader.GradeAsync(input, cancel);
        double value = Output.Evaluate(grades);
        return double.IsFinite(value) ? value
            : throw new GraderException($"calculate_output '{Output.Source}' is not a finite number for grades {string.Join(", ", grades.Select(g => $"{g.Key}={g.Value}"))} (a division by zero, or log/sqrt of a negative).", Output.Param);
    }
}
