using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using AdapterService.Core.Storage;
using AdapterService.Core.Training;

namespace AdapterService.Core.Jobs;

/// <summary>
/// A hyperparameter sweep: one fine-tuning job whose members differ in one hyperparameter (today
/// <c>learning_rate_multiplier</c>, 2 to <see cref="MaxMembers"/> values) and train fused over one copy of the base. At the
/// end each member is scored by its validation loss; the lowest is the job's fine-tuned model, and every member's
/// epoch checkpoints stay listed with its hyperparameters. Stored on the job as JSON (<see cref="FineTuningJob.Sweep"/>),
/// with <see cref="BestMember"/> (0-based) once the job succeeded.
/// </summary>
public sealed record Sweep(
    [property: JsonPropertyName("parameter")] string Parameter,
    [property: JsonPropertyName("values")] IReadOnlyList<double> Values,
    [property: JsonPropertyName("best_member"), JsonIgnore(Condition = JsonIgnoreCondition.WhenWritingNull)] int? BestMember = null)
{
    /// <summary>The most values a sweep may list: the members of a fused group (<c>Workers:MaxFusedJobs</c>'s default).</summary>
    public const int MaxMembers = 4;

    public const string LearningRateMultiplier = "learning_rate_multiplier";

    public string ToJson() => JsonSerializer.Serialize(this);

    /// <summary>The job's sweep, or null for a job of one training.</summary>
    public static Sweep? Of(FineTuningJob job) => job.Sweep is null ? null : JsonSerializer.Deserialize<Sweep>(job.Sweep);

    /// <summary>What member <paramref name="member"/> trains with: the job's hyperparameters with the swept one set to its value.</summary>
    public Hyperparameters HyperparametersOf(FineTuningJob job, int member) =>
        JobSpecification.Hyperparameters(job.Epochs, job.BatchSize, Values[member]);

    /// <summary>The member's hyperparameters as the API shows them on its checkpoints and in its events.</summary>
    public Dictionary<string, object> Shown(FineTuningJob job, int member) => new()
    {
        ["n_epochs"] = job.Epochs, ["batch_size"] = job.BatchSize, [Parameter] = Values[member],
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
    /// The winner: the member with the lowest final validation loss among those that finished (null: none did). Ties go to
    /// the member listed first.
    /// </summary>
    public static int? Best(IEnumerable<(int Member, double? ValidLoss)> finished) =>
        finished.Where(m => m.ValidLoss is { } loss && double.IsFinite(loss)).OrderBy(m => m.ValidLoss).ThenBy(m => m.Member)
            .Select(m => (int?)m.Member).FirstOrDefault();
}
