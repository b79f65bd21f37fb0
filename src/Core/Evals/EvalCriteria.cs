using System.Text.Json;
using AdapterService.Core.Grading;

namespace AdapterService.Core.Evals;

/// <summary>A request to create or run an eval is invalid; <see cref="Param"/> names the field (OpenAI's error <c>param</c>).</summary>
public sealed class EvalException(string message, string param, string? code = null, int status = 400) : Exception(message)
{
    public string Param { get; } = param;
    public string? Code { get; } = code;
    /// <summary>400, or 404 for a model, eval or file that does not exist.</summary>
    public int Status { get; } = status;
}

/// <summary>
/// One testing criterion: a grader of the grader library, known by its name. A grade at or above <see cref="PassThreshold"/>
/// passes: the criterion's <c>pass_threshold</c> (OpenAI's field for text_similarity and score_model graders), else 1,
/// the grade of a passing string_check.
/// </summary>
public sealed record EvalCriterion(string Name, Grader Grader, double PassThreshold)
{
    public bool Passes(double grade) => grade >= PassThreshold;
}

public static class EvalCriteria
{
    /// <summary>The most criteria an eval may have.</summary>
    public const int MaxCriteria = 16;

    /// <summary>
    /// An eval's <c>testing_criteria</c>: a non-empty array of grader objects (<see cref="Graders.Parse"/>), each named
    /// (its <c>name</c>, or <c>{type}-{index}</c> when it has none), the names distinct. Errors name the JSON path.
    /// </summary>
    public static IReadOnlyList<EvalCriterion> Parse(JsonElement json, string path = "testing_criteria")
    {
        if (json.ValueKind != JsonValueKind.Array || json.GetArrayLength() is 0 or > MaxCriteria)
            throw new EvalException($"{path} must be an array of 1 to {MaxCriteria} graders.", path);
        var criteria = new List<EvalCriterion>();
        int i = 0;
        foreach (var element in json.EnumerateArray())
        {
            string at = $"{path}[{i}]";
            Grader grader;
            double? threshold;
            try
            {
                grader = Graders.Parse(element, at);
                threshold = Graders.Json.OptionalNumber(element, at, "pass_threshold");
            }
            catch (GraderException e) { throw new EvalException(e.Message, e.Param); }
            string name = grader.Name.Length > 0 ? grader.Name : $"{element.GetProperty("type").GetString()}-{i}";
            if (criteria.Any(c => c.Name == name))
                throw new EvalException($"Two testing criteria are named '{name}'; each needs its own name.", at + ".name");
            criteria.Add(new EvalCriterion(name, grader, threshold ?? 1));
            i++;
        }
        return criteria;
    }
}
