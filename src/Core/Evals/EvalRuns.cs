using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Core.Grading;
using AdapterService.Core.Inference;
using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Evals;

/// <summary>A criterion's counts in a run (OpenAI's <c>per_testing_criteria_results</c>) and, our addition, its mean grade.</summary>
public sealed record CriterionSummary(string TestingCriteria, int Passed, int Failed, double? MeanScore);

/// <summary>
/// Executes eval runs and records them: the runs of one call (a <see cref="EvalRun.Group"/>) together through
/// <see cref="EvalExecution"/>, each item's output as an <see cref="EvalOutputItem"/>, the counts after each window (so a
/// polled run shows its progress), and the run's end. A run cancelled or deleted meanwhile stops at the next window.
/// </summary>
public sealed class EvalRuns(ServiceDbContext db, IBlobStore blobs, InferenceEngine engine)
{
    /// <summary>The most items a run may score.</summary>
    public int MaxItems { get; init; } = 100_000;

    /// <summary>The item-schema properties the eval requires of each item (<c>schema.properties.item.required</c>).</summary>
    public static IReadOnlyList<string> RequiredItemFields(Eval eval)
    {
        var config = JsonNode.Parse(eval.DataSourceConfig);
        return config?["schema"]?["properties"]?["item"]?["required"] is JsonArray required
            ? [.. required.Select(r => r?.GetValue<string>()).OfType<string>()]
            : [];
    }

    public static IReadOnlyList<EvalCriterion> CriteriaOf(Eval eval) => EvalCriteria.Parse(JsonDocument.Parse(eval.TestingCriteria).RootElement);

    /// <summary>Moves the queued runs of <paramref name="group"/> to in_progress (each only if still queued) and returns them.</summary>
    public async Task<List<EvalRun>> ClaimAsync(string group, CancellationToken cancel)
    {
        var ids = await db.EvalRuns.AsNoTracking().Where(r => r.Group == group && r.Status == EvalRunStatus.Queued).OrderBy(r => r.Sequence).Select(r => r.Id).ToListAsync(cancel);
        var claimed = new List<string>();
        foreach (var id in ids)
            if (await db.EvalRuns.Where(r => r.Id == id && r.Status == EvalRunStatus.Queued)
                    .ExecuteUpdateAsync(s => s.SetProperty(r => r.Status, EvalRunStatus.InProgress), cancel) == 1)
                claimed.Add(id);
        return await db.EvalRuns.AsNoTracking().Where(r => claimed.Contains(r.Id)).OrderBy(r => r.Sequence).ToListAsync(cancel);
    }

    /// <summary>Runs <paramref name="runs"/> (in progress, of one eval and one data source) to their end; a failure fails them all with its message.</summary>
    public async Task ExecuteAsync(IReadOnlyList<EvalRun> runs, CancellationToken cancel)
    {
        if (runs.Count == 0) return;
        var ids = runs.Select(r => r.Id).ToList();
        try
        {
            var eval = await db.Evals.AsNoTracking().SingleOrDefaultAsync(e => e.Id == runs[0].EvalId, cancel)
                       ?? throw new EvalException($"The eval {runs[0].EvalId} was deleted.", "eval_id");
            var criteria = CriteriaOf(eval);
            var source = EvalDataSource.Parse(JsonDocument.Parse(runs[0].DataSource).RootElement);
            var items = await source.ItemsAsync(db, blobs, criteria, RequiredItemFields(eval), MaxItems, cancel);
            var tallies = runs.Select(_ => new Tally(criteria)).ToArray();
            var judge = new EngineJudge(engine, db, blobs);
            await EvalExecution.RunAsync(engine, judge, [.. runs.Select(r => r.Model)], source, items, criteria, runs[0].ProjectId, async results =>
            {
                var statuses = await db.EvalRuns.AsNoTracking().Where(r => ids.Contains(r.Id)).ToDictionaryAsync(r => r.Id, r => r.Status, cancel);
                var goOn = new bool[runs.Count];
                for (int m = 0; m < runs.Count; m++)
                {
                    if (results[m] is not { } done || statuses.GetValueOrDefault(runs[m].Id) != EvalRunStatus.InProgress) continue;
                    goOn[m] = true;
                    foreach (var result in done)
                    {
                        tallies[m].Add(result);
                        db.EvalOutputItems.Add(OutputItem(runs[m], result));
                    }
                    await db.SaveChangesAsync(cancel);
                    await tallies[m].SaveAsync(db, runs[m].Id, cancel);
                }
                return goOn;
            }, cancel);
            foreach (var run in runs)
                await EndAsync(db, run.Id, EvalRunStatus.Completed, cancel: CancellationToken.None);
        }
        catch (OperationCanceledException) when (runs[0].JobId is not null)
        {
            // A checkpoint's run stops with its job (cancelled, paused, shut down); the API's runs are queued again at start.
            foreach (var id in ids)
                await EndAsync(db, id, EvalRunStatus.Canceled, cancel: CancellationToken.None);
            throw;
        }
        catch (Exception e) when (e is EvalException or GraderException or IOException or JsonException)
        {
            db.ChangeTracker.Clear();
            foreach (var id in ids)
                await EndAsync(db, id, EvalRunStatus.Failed, e.Message, CancellationToken.None);
        }
    }

    /// <summary>
    /// The one way a run ends: moves it to <paramref name="status"/> (completed, failed with <paramref name="error"/>, or
    /// canceled, the only end a queued run may take) and, in the same transaction, queues its webhook event
    /// (<c>eval.run.succeeded</c>, <c>failed</c>, <c>canceled</c>). False when the run had already ended (nothing is sent).
    /// </summary>
    public static async Task<bool> EndAsync(ServiceDbContext db, string runId, string status, string? error = null, CancellationToken cancel = default)
    {
        string type = status switch
        {
            EvalRunStatus.Completed => WebhookEvents.EvalRunSucceeded,
            EvalRunStatus.Failed => WebhookEvents.EvalRunFailed,
            EvalRunStatus.Canceled => WebhookEvents.EvalRunCanceled,
            _ => throw new ArgumentException($"{status} does not end a run", nameof(status)),
        };
        await using var transaction = await db.Database.BeginTransactionAsync(cancel);
        var running = db.EvalRuns.IgnoreQueryFilters().Where(r => r.Id == runId
            && (r.Status == EvalRunStatus.InProgress || (status == EvalRunStatus.Canceled && r.Status == EvalRunStatus.Queued)));
        int changed = error is null
            ? await running.ExecuteUpdateAsync(s => s.SetProperty(r => r.Status, status), cancel)
            : await running.ExecuteUpdateAsync(s => s.SetProperty(r => r.Status, status).SetProperty(r => r.ErrorCode, "run_failed").SetProperty(r => r.ErrorMessage, error), cancel);
        if (changed == 0) return false;
        var run = await db.EvalRuns.IgnoreQueryFilters().AsNoTracking().SingleAsync(r => r.Id == runId, cancel);
        WebhookEvents.Publish(db, run.ProjectId, type, run.Id, DateTimeOffset.UtcNow.ToUnixTimeSeconds());
        await db.SaveChangesAsync(cancel);
        await transaction.CommitAsync(cancel);
        return true;
    }

    /// <summary>The per-criterion summaries of a run, as stored.</summary>
    public static IReadOnlyList<CriterionSummary> Summaries(EvalRun run) =>
        run.PerCriteria is null ? [] : JsonSerializer.Deserialize<List<CriterionSummary>>(run.PerCriteria, Json) ?? [];

    static readonly JsonSerializerOptions Json = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    static EvalOutputItem OutputItem(EvalRun run, EvalItemResult result)
    {
        var source = JsonNode.Parse(run.DataSource)!;
        var sampling = source["sampling_params"];
        var sample = new JsonObject
        {
            ["input"] = new JsonArray([.. result.Input.Select(m => (JsonNode)new JsonObject { ["role"] = m.Role, ["content"] = m.Content })]),
            ["output"] = result.Sample.Error is null ? new JsonArray(new JsonObject { ["role"] = "assistant", ["content"] = result.Sample.Output }) : new JsonArray(),
            ["finish_reason"] = result.Sample.FinishReason,
            ["model"] = run.Model,
            ["usage"] = new JsonObject
            {
                ["prompt_tokens"] = result.Sample.PromptTokens, ["completion_tokens"] = result.Sample.CompletionTokens,
                ["total_tokens"] = result.Sample.PromptTokens + result.Sample.CompletionTokens, ["cached_tokens"] = 0,
            },
            ["error"] = result.Sample.Error is { } error ? new JsonObject { ["code"] = "sample_failed", ["message"] = error } : null,
            ["temperature"] = sampling?["temperature"]?.DeepClone() ?? 0,
            ["max_completion_tokens"] = sampling?["max_completion_tokens"]?.DeepClone() ?? EngineJudge.DefaultMaxTokens,
            ["top_p"] = sampling?["top_p"]?.DeepClone() ?? 1,
            ["seed"] = sampling?["seed"]?.DeepClone(),
        };
        var grades = new JsonArray([.. result.Grades.Select(g => (JsonNode)new JsonObject
        {
            ["name"] = g.Criterion.Name, ["type"] = GraderType(g.Criterion.Grader), ["score"] = g.Score, ["passed"] = g.Passed,
            ["error"] = g.Error, ["sample"] = null,
        })]);
        return new EvalOutputItem
        {
            Id = "outputitem_" + Ids.New(), RunId = run.Id, EvalId = run.EvalId, ItemIndex = result.Index,
            Status = result.Errored ? "error" : result.Passed ? "pass" : "fail",
            Item = result.Item.GetRawText(), Sample = sample.ToJsonString(), Results = grades.ToJsonString(), CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
        };
    }

    static string GraderType(Grader grader) => grader switch
    {
        StringCheckGrader => "string_check",
        TextSimilarityGrader => "text_similarity",
        ScoreModelGrader => "score_model",
        MultiGrader => "multi",
        _ => "grader",
    };

    /// <summary>A run's counts as its items come in.</summary>
    sealed class Tally(IReadOnlyList<EvalCriterion> criteria)
    {
        int total, passed, failed, errored;
        readonly int[] criterionPassed = new int[criteria.Count], criterionFailed = new int[criteria.Count];
        readonly double[] sums = new double[criteria.Count];
        readonly int[] graded = new int[criteria.Count];

        public void Add(EvalItemResult result)
        {
            total++;
            if (result.Errored) errored++;
            else if (result.Passed) passed++;
            else failed++;
            for (int c = 0; c < criteria.Count; c++)
            {
                var grade = result.Grades[c];
                if (grade.Score is not { } score) continue;
                graded[c]++;
                sums[c] += score;
                if (grade.Passed) criterionPassed[c]++;
                else criterionFailed[c]++;
            }
        }

        public Task SaveAsync(ServiceDbContext db, string runId, CancellationToken cancel)
        {
            string perCriteria = JsonSerializer.Serialize(criteria.Select((c, i) =>
                new CriterionSummary(c.Name, criterionPassed[i], criterionFailed[i], graded[i] > 0 ? sums[i] / graded[i] : null)).ToList(), Json);
            return db.EvalRuns.Where(r => r.Id == runId).ExecuteUpdateAsync(s => s
                .SetProperty(r => r.Total, total).SetProperty(r => r.Passed, passed).SetProperty(r => r.Failed, failed)
                .SetProperty(r => r.Errored, errored).SetProperty(r => r.PerCriteria, perCriteria), cancel);
        }
    }
}
