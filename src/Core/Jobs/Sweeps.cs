using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.Json.Serialization;
using AdapterService.Core.Evals;
using AdapterService.Core.Storage;
using AdapterService.Core.Training;

namespace AdapterService.Core.Jobs;

/// <summary>
/// A hyperparameter sweep: one fine-tuning job whose members differ in one setting (<c>learning_rate_multiplier</c> or
/// the adapter's <c>rank</c>, 2 to <see cref="MaxMembers"/> values) and train fused over one copy of the base. At the
/// end each member is scored, by its validation loss or, when the job names an eval, by the mean grade of the eval's
/// <see cref="Criterion"/>; the best is the job's fine-tuned model, and every member's epoch checkpoints stay listed with
/// its hyperparameters. Stored on the job as JSON (<see cref="FineTuningJob.Sweep"/>), with <see cref="BestMember"/>
/// (0-based) once the job succeeded.
/// </summary>
/// <remarks>
/// <see cref="Adapters"/>: a rank sweep's member adapter configs (JSON, as <see cref="FineTuningJob.AdapterConfig"/>),
/// each what a job with that one rank trains; null otherwise. <see cref="Criterion"/>: the eval's testing criterion the
/// members are scored by; null: by validation loss.
/// </remarks>
public sealed record Sweep(
    [property: JsonPropertyName("parameter")] string Parameter,
    [property: JsonPropertyName("values")] IReadOnlyList<double> Values,
    [property: JsonPropertyName("best_member"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int? BestMember = null,
    [property: JsonPropertyName(FineTuningJob.SweepAdaptersKey), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] IReadOnlyList<string>? Adapters = null,
    [property: JsonPropertyName("criterion"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] string? Criterion = null)
{
    /// <summary>The most values a sweep may list: the members of a fused group (<c>Workers:MaxFusedJobs</c>'s default).</summary>
    public const int MaxMembers = 4;

    public const string LearningRateMultiplier = "learning_rate_multiplier";

    /// <summary>The adapter's rank (<c>adapter.rank</c> in a request).</summary>
    public const string Rank = "rank";

    /// <summary>The checkpoint metric members are scored by: <c>valid_loss</c> (lowest wins) or the criterion's <c>eval_…</c> (highest wins).</summary>
    public string ScoredBy => Criterion is null ? "valid_loss" : EvalAttachment.Metric(Criterion);

    public string ToJson() => JsonSerializer.Serialize(this);

    /// <summary>The job's sweep, or null for a job of one training.</summary>
    public static Sweep? Of(FineTuningJob job) => job.Sweep is null ? null : JsonSerializer.Deserialize<Sweep>(job.Sweep);

    /// <summary>What member <paramref name="member"/> trains with: the job's hyperparameters, with its learning rate when that is swept.</summary>
    public Hyperparameters HyperparametersOf(FineTuningJob job, int member) =>
        JobSpecification.Hyperparameters(job.Epochs, job.BatchSize, LearningRateMultiplierOf(job, member));

    public double LearningRateMultiplierOf(FineTuningJob job, int member) => Parameter == LearningRateMultiplier ? Values[member] : job.LearningRateMultiplier;

    /// <summary>The adapter config (JSON) member <paramref name="member"/> trains: its own in a rank sweep, the job's otherwise.</summary>
    public string AdapterConfigOf(FineTuningJob job, int member) => Adapters?[member] ?? job.AdapterConfig;

    /// <summary>The member's hyperparameters as the API shows them on its checkpoints and in its events (a rank sweep's members add <c>rank</c>).</summary>
    public Dictionary<string, object> Shown(FineTuningJob job, int member) => new()
    {
        ["n_epochs"] = job.Epochs, ["batch_size"] = job.BatchSize, [LearningRateMultiplier] = LearningRateMultiplierOf(job, member), [Parameter] = Values[member],
    };

    /// <summary>A member's name in events: <c>member 2 (learning_rate_multiplier=1)</c> (numbered from 1 there).</summary>
    public string Label(int member) => $"member {member + 1} ({Parameter}={Values[member].ToString(CultureInfo.InvariantCulture)})";

    /// <summary>
    /// Reads a request's value for the swept hyperparameter when it is a list; null when it is not a list. Each value must
    /// pass <paramref name="valid"/>; <paramref name="name"/> is the field to name in errors.
    /// </summary>
    public static (Sweep? Sweep, JobSpecError? Error) Read(JsonElement? value, string parameter, string name, Func<double, bool> valid, string expected)
    {
        if (value is not { ValueKind: JsonValueKind.Array } list) return (null, null);
        var values = new List<double>();
        foreach (var item in list.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Number || !valid(item.GetDouble()))
                return (null, new($"Each value of the sweep {name} must be {expected}, got {item.GetRawText()}.", name));
            values.Add(item.GetDouble());
        }
        if (values.Count is < 2 or > MaxMembers)
            return (null, new($"A sweep's {name} lists 2 to {MaxMembers} values, got {values.Count}.", name));
        if (values.Distinct().Count() != values.Count)
            return (null, new($"The sweep's {name} lists a value twice: each member must train with its own value.", name));
        return (new Sweep(parameter, values), null);
    }

    /// <summary>
    /// A member's eval score: the mean grade of <see cref="Criterion"/> on the adapter it would be as a job alone, that is
    /// its last checkpoint, or with <paramref name="keepBest"/> its checkpoint with the highest grade (the latest of
    /// equals, <see cref="EvalAttachment.Best"/>). Null when that checkpoint was not scored (no run completed, no checkpoint).
    /// </summary>
    public (double? Score, Checkpoint? Checkpoint) EvalScoreOf(IEnumerable<Checkpoint> memberCheckpoints, bool keepBest)
    {
        if (Criterion is null) return (null, null);
        var list = memberCheckpoints.ToList();
        var scored = keepBest ? EvalAttachment.Best(list, Criterion) : list.MaxBy(c => c.StepNumber);
        return scored is not null && JsonNode.Parse(scored.Metrics)?[EvalAttachment.Metric(Criterion)] is JsonValue v && v.TryGetValue<double>(out var d) && double.IsFinite(d)
            ? (d, scored) : (null, scored);
    }

    /// <summary>
    /// The winner among the members that finished (null: none did). By validation loss: the lowest, ties to the member
    /// listed first. By an eval: the highest score; ties to the lower validation loss (when there is one), then to the
    /// member listed first; members without a score rank after every scored one.
    /// </summary>
    public int? Best(IEnumerable<(int Member, double? ValidLoss, double? EvalScore)> finished)
    {
        var list = finished.ToList();
        static double Loss(double? loss) => loss is { } l && double.IsFinite(l) ? l : double.PositiveInfinity;
        if (Criterion is null)
            return list.Where(m => m.ValidLoss is { } loss && double.IsFinite(loss)).OrderBy(m => m.ValidLoss).ThenBy(m => m.Member)
                .Select(m => (int?)m.Member).FirstOrDefault();
        return list.OrderByDescending(m => m.EvalScore ?? double.NegativeInfinity).ThenBy(m => Loss(m.ValidLoss)).ThenBy(m => m.Member)
            .Select(m => (int?)m.Member).FirstOrDefault();
    }
}
