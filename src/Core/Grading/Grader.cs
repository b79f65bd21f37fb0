using System.Text.Json;

namespace AdapterService.Core.Grading;

/// <summary>
/// A grader as OpenAI defines them (fine-tuning's <c>method.reinforcement.grader</c>, evals' testing criteria): made from its
/// JSON by <see cref="Graders.Parse"/> (validation, errors naming the JSON path), then run on one item and one sample
/// (execution). A grade is a number; string checks and text similarity give [0, 1], a score model its <c>range</c>.
/// </summary>
public abstract class Grader
{
    /// <summary>The grader's <c>name</c> (optional in OpenAI's eval criteria; empty when not given).</summary>
    public required string Name { get; init; }

    /// <summary>The grade of the sample in <paramref name="input"/> for its item.</summary>
    public abstract Task<double> GradeAsync(GradingInput input, CancellationToken cancel = default);

    /// <summary>Every template this grader (and those inside it) renders, so a data file can be checked for the item fields they use.</summary>
    public abstract IEnumerable<Template> Templates { get; }

    /// <summary>The models this grader (and those inside it) asks for a judgement, with the JSON path naming each.</summary>
    public virtual IEnumerable<(string Model, string Path)> JudgeModels => [];

    /// <summary>
    /// The first item field a template needs that <paramref name="item"/> lacks (e.g. <c>item.answer</c>), or null when every
    /// one is there. A job's training and validation lines are checked with it before the job is queued.
    /// </summary>
    public string? MissingItemField(JsonElement item) =>
        Templates.SelectMany(t => t.ItemPaths).FirstOrDefault(p => !TemplatePath.Exists(item, p.Segments)) is { } missing ? missing.Text : null;
}

/// <summary>What is graded: the data item (a line of the file, its fields under <c>item</c>) and the model's sample.</summary>
/// <param name="Item">The item's JSON object (the whole line, messages included).</param>
/// <param name="OutputText">The sample's text, <c>{{sample.output_text}}</c>; <c>{{sample.output_json...}}</c> is that text parsed as JSON.</param>
/// <param name="Judge">Generates the replies of <c>score_model</c> judges; null where no grader needs one.</param>
public sealed record GradingInput(JsonElement Item, string OutputText, IJudge? Judge = null)
{
    JsonElement? outputJson;
    bool parsed;

    /// <summary>The sample's text as JSON, or null when it is not JSON (then its fields render as empty text: the sample is what is graded).</summary>
    public JsonElement? OutputJson
    {
        get
        {
            if (parsed) return outputJson;
            parsed = true;
            try { outputJson = JsonDocument.Parse(OutputText).RootElement.Clone(); }
            catch (JsonException) { outputJson = null; }
            return outputJson;
        }
    }
}

/// <summary>A chat message a judge reads.</summary>
public sealed record JudgeMessage(string Role, string Content);

/// <summary>How a judge samples its reply (a score model's <c>sampling_params</c>).</summary>
public sealed record JudgeSampling(double? Temperature, double? TopP, int? MaxTokens, long? Seed);

/// <summary>
/// The models <c>score_model</c> graders ask: a model served by this service (a base or a fine-tuned model), named as the
/// API names it. Core defines what it needs; the API (or a worker's own engine) implements it.
/// </summary>
public interface IJudge
{
    /// <summary>Whether <paramref name="model"/> can judge (it exists and is a language model this caller may use).</summary>
    Task<bool> ExistsAsync(string model, CancellationToken cancel = default);

    /// <summary>The reply of <paramref name="model"/> to <paramref name="messages"/> (its chat template applied).</summary>
    Task<string> ReplyAsync(string model, IReadOnlyList<JudgeMessage> messages, JudgeSampling sampling, CancellationToken cancel = default);
}

/// <summary>
/// A grader's JSON is invalid (validation), or an item lacks a field it needs (execution). <see cref="Param"/> is the JSON
/// path of the offending value, e.g. <c>method.reinforcement.grader.graders.x.type</c>.
/// </summary>
public sealed class GraderException(string message, string param) : Exception(message)
{
    public string Param { get; } = param;
}
