using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Core.Inference;
using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Evals;

/// <summary>
/// A fine-tuning job's <c>eval</c> (our extension): <c>{"id": "eval_...", "data_source": {...}, "keep_best": "criterion"}</c>.
/// <c>data_source</c> is a run's <c>completions</c> data source without a model (each checkpoint is the model);
/// <c>keep_best</c> (optional) names a testing criterion: the job's fine-tuned model is then the checkpoint with the
/// highest mean grade on it.
/// </summary>
public sealed record EvalAttachment(string EvalId, JsonElement DataSource, string? KeepBest)
{
    public const string Path = "eval";

    /// <summary>The checkpoint metric a criterion's mean grade is stored as.</summary>
    public static string Metric(string criterion) => "eval_" + criterion;

    public string ToJson() => new JsonObject { ["id"] = EvalId, ["data_source"] = JsonNode.Parse(DataSource.GetRawText()), ["keep_best"] = KeepBest }.ToJsonString();

    public static EvalAttachment FromJson(string json)
    {
        var root = JsonDocument.Parse(json).RootElement;
        return new EvalAttachment(root.GetProperty("id").GetString()!, root.GetProperty("data_source").Clone(),
            root.TryGetProperty("keep_best", out var k) && k.ValueKind == JsonValueKind.String ? k.GetString() : null);
    }

    /// <summary>
    /// Checks a job request's <c>eval</c> against the project's evals (the context's scope) before the job is created:
    /// the eval exists, its data source parses and every item has the fields it uses, <c>keep_best</c> names a criterion.
    /// </summary>
    public static async Task<EvalAttachment> CheckAsync(JsonElement json, ServiceDbContext db, IBlobStore blobs, int maxItems, CancellationToken cancel)
    {
        if (json.ValueKind != JsonValueKind.Object) throw new EvalException($"{Path} must be an object: {{\"id\": \"eval_...\", \"data_source\": {{...}}}}.", Path);
        if (!json.TryGetProperty("id", out var id) || id.ValueKind != JsonValueKind.String)
            throw new EvalException($"Missing required parameter: '{Path}.id'.", Path + ".id");
        var eval = await db.Evals.AsNoTracking().SingleOrDefaultAsync(e => e.Id == id.GetString(), cancel)
                   ?? throw new EvalException($"No such eval: {id.GetString()}", Path + ".id", "not_found", 404);
        if (!json.TryGetProperty("data_source", out var dataSource)) throw new EvalException($"Missing required parameter: '{Path}.data_source'.", Path + ".data_source");
        var source = EvalDataSource.Parse(dataSource, needsModel: false, path: Path + ".data_source");
        var criteria = EvalRuns.CriteriaOf(eval);
        await source.ItemsAsync(db, blobs, criteria, EvalRuns.RequiredItemFields(eval), maxItems, cancel, Path + ".data_source");
        string? keepBest = null;
        if (json.TryGetProperty("keep_best", out var k) && k.ValueKind != JsonValueKind.Null)
        {
            keepBest = k.ValueKind == JsonValueKind.String ? k.GetString() : throw new EvalException($"{Path}.keep_best must be a criterion's name.", Path + ".keep_best");
            if (criteria.All(c => c.Name != keepBest))
                throw new EvalException($"{Path}.keep_best is '{keepBest}'; the eval's criteria are {string.Join(", ", criteria.Select(c => $"'{c.Name}'"))}.", Path + ".keep_best");
        }
        foreach (var extra in json.EnumerateObject().Where(p => p.Name is not ("id" or "data_source" or "keep_best")))
            throw new EvalException($"Unknown parameter: '{Path}.{extra.Name}'.", $"{Path}.{extra.Name}");
        return new EvalAttachment(eval.Id, dataSource.Clone(), keepBest);
    }

    /// <summary>
    /// Scores one checkpoint of <paramref name="job"/> (a worker calls it once the checkpoint is saved): a run of the eval
    /// named after the checkpoint, recorded like any run (so the Evals API lists it), executed now on <paramref name="engine"/>.
    /// The checkpoint's metrics get <c>eval_{criterion}</c> (mean grade) and <c>eval_{criterion}_pass_rate</c>. Returns the run.
    /// </summary>
    public async Task<EvalRun> ScoreCheckpointAsync(FineTuningJob job, Checkpoint checkpoint, ServiceDbContext db, IBlobStore blobs, InferenceEngine engine, CancellationToken cancel)
    {
        var source = JsonNode.Parse(DataSource.GetRawText())!.AsObject();
        source["model"] = checkpoint.Name;
        var run = new EvalRun
        {
            Id = "evalrun_" + Ids.New(), EvalId = EvalId, ProjectId = job.ProjectId, Model = checkpoint.Name,
            Name = $"{job.Id} step {checkpoint.StepNumber}" + (checkpoint.SweepMember is { } member ? $" member {member + 1}" : ""),
            Group = "evalgroup_" + Ids.New(), Status = EvalRunStatus.InProgress, DataSource = source.ToJsonString(), JobId = job.Id,
            Metadata = new JsonObject { ["fine_tuning_job"] = job.Id, ["step"] = checkpoint.StepNumber.ToString(System.Globalization.CultureInfo.InvariantCulture) }.ToJsonString(),
            CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
        };
        db.EvalRuns.Add(run);
        await db.SaveChangesAsync(cancel);
        db.Entry(run).State = EntityState.Detached;
        await new EvalRuns(db, blobs, engine).ExecuteAsync([run], cancel);
        var done = await db.EvalRuns.AsNoTracking().SingleAsync(r => r.Id == run.Id, cancel);

        var metrics = JsonNode.Parse(checkpoint.Metrics)!.AsObject();
        foreach (var c in EvalRuns.Summaries(done))
        {
            metrics[Metric(c.TestingCriteria)] = c.MeanScore;
            metrics[Metric(c.TestingCriteria) + "_pass_rate"] = done.Total > 0 ? (double)c.Passed / done.Total : null;
        }
        metrics["eval_run_id"] = done.Id;
        string json = metrics.ToJsonString();
        await db.Checkpoints.Where(c => c.Id == checkpoint.Id).ExecuteUpdateAsync(s => s.SetProperty(c => c.Metrics, json), cancel);
        return done;
    }

    /// <summary>The checkpoint with the highest <see cref="KeepBest"/> grade (the latest of equals), or null when none was scored.</summary>
    public static Checkpoint? Best(IEnumerable<Checkpoint> checkpoints, string criterion) =>
        checkpoints.Select(c => (Checkpoint: c, Score: JsonNode.Parse(c.Metrics)?[Metric(criterion)] is JsonValue v && v.TryGetValue<double>(out var d) ? d : (double?)null))
            .Where(c => c.Score is not null).OrderByDescending(c => c.Score).ThenByDescending(c => c.Checkpoint.StepNumber).Select(c => c.Checkpoint).FirstOrDefault();
}
