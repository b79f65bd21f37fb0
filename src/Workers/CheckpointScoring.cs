using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Core.Evals;
using AdapterService.Core.Inference;
using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Workers;

/// <summary>
/// A job's eval at its checkpoints (the request's <c>eval</c>): each checkpoint, once saved, is scored by a run of the eval
/// through this process's engine; the result is a job event (type <c>eval</c>, its numbers in <c>data</c>) and the
/// checkpoint's <c>eval_*</c> metrics. With <c>keep_best</c> the job's adapter is the best checkpoint's weights.
/// A sweep's member (<paramref name="sweepMember"/>) has one of its own, over its own checkpoints, its events marked with the member.
/// </summary>
sealed class CheckpointScoring(FineTuningJob job, EvalAttachment eval, ServiceDbContext db, IBlobStore blobs, InferenceEngine engine, JobLifecycle jobs, int? sweepMember = null)
{
    public static CheckpointScoring? For(FineTuningJob job, ServiceDbContext db, IBlobStore blobs, InferenceEngine engine, JobLifecycle jobs, int? sweepMember = null) =>
        job.EvalSettings is null ? null : new CheckpointScoring(job, EvalAttachment.FromJson(job.EvalSettings), db, blobs, engine, jobs, sweepMember);

    // "Sweep member 2 (rank=8): " before a member's events.
    readonly string prefix = sweepMember is { } member ? $"Sweep {Sweep.Of(job)!.Label(member)}: " : "";

    /// <summary>Scores the checkpoint at <paramref name="step"/> (saved already); a failed run is a warning, not the job's failure.</summary>
    public void Score(int step, CancellationToken cancel)
    {
        var checkpoint = db.Checkpoints.AsNoTracking().Single(c => c.JobId == job.Id && c.StepNumber == step && c.SweepMember == sweepMember);
        var run = eval.ScoreCheckpointAsync(job, checkpoint, db, blobs, engine, cancel).GetAwaiter().GetResult();
        if (run.Status != EvalRunStatus.Completed)
        {
            jobs.AddEvent(job.Id, prefix + $"Eval {eval.EvalId} on the checkpoint at step {step} did not complete ({run.Status}): {run.ErrorMessage}", level: "warn", step: step);
            return;
        }
        var summaries = EvalRuns.Summaries(run);
        var metrics = new JsonObject();
        foreach (var s in summaries)
        {
            metrics[EvalAttachment.Metric(s.TestingCriteria)] = s.MeanScore;
            metrics[EvalAttachment.Metric(s.TestingCriteria) + "_pass_rate"] = run.Total > 0 ? (double)s.Passed / run.Total : null;
        }
        var data = new JsonObject
        {
            ["eval_id"] = eval.EvalId, ["run_id"] = run.Id, ["step"] = step, ["checkpoint"] = checkpoint.Name, ["metrics"] = metrics,
            ["result_counts"] = new JsonObject { ["total"] = run.Total, ["passed"] = run.Passed, ["failed"] = run.Failed, ["errored"] = run.Errored },
        };
        if (sweepMember is { } m) data["sweep_member"] = m;
        jobs.AddEvent(job.Id, prefix + $"Eval {eval.EvalId} on the checkpoint at step {step}: "
            + string.Join(", ", summaries.Select(s => $"{s.TestingCriteria} {s.Passed}/{run.Total} passed (mean {(s.MeanScore ?? double.NaN).ToString("0.0000", CultureInfo.InvariantCulture)})")),
            type: "eval", data: data.ToJsonString(), step: step);
    }

    /// <summary>
    /// With <c>keep_best</c>: the blob folder of the checkpoint with the highest mean grade on that criterion when it is not
    /// the last one (whose weights are the trained adapter's), with an event saying so; otherwise null.
    /// </summary>
    public string? BestCheckpointFolder(int lastStep)
    {
        if (eval.KeepBest is not { } criterion) return null;
        var best = EvalAttachment.Best(db.Checkpoints.AsNoTracking().Where(c => c.JobId == job.Id && c.SweepMember == sweepMember).ToList(), criterion);
        if (best is null || best.StepNumber == lastStep) return null;
        double score = JsonNode.Parse(best.Metrics)![EvalAttachment.Metric(criterion)]!.GetValue<double>();
        jobs.AddEvent(job.Id, prefix + $"Keeping the checkpoint at step {best.StepNumber} as the fine-tuned model: the highest mean '{criterion}' grade ({score.ToString("0.0000", CultureInfo.InvariantCulture)})",
            type: "message", data: JsonSerializer.Serialize(new { keep_best = criterion, step = best.StepNumber, score }));
        return blobs.Resolve(best.BlobPath);
    }
}
