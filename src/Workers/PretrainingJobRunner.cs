using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Pretraining;
using AdapterService.Core.Storage;
using AdapterService.Core.Training;
using Hangfire;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace AdapterService.Workers;

/// <summary>
/// The Hangfire job that pre-trains a built-in base model. It is a fine-tuning job row of type <see cref="JobType"/>, so
/// its progress goes the same way as fine-tuning's: metrics and status events in <c>job_events</c>, which the API's relay
/// pushes as SignalR <c>progress</c> and <c>status</c> messages and <c>GET /v1/fine_tuning/jobs/{id}/events</c> lists.
/// It writes the model to the blob store as a Hugging Face folder and registers it as a base model, whose id becomes the
/// job's <c>fine_tuned_model</c>. There is no state to resume from: a pre-training stopped by shutdown starts over.
/// </summary>
public sealed class PretrainingJobRunner(
    ServiceDbContext db, IBlobStore blobs, IEnumerable<IPretrainedBuiltin> builtins, FusionHost trainings, ILogger<PretrainingJobRunner> log)
{
    /// <summary>The <see cref="FineTuningJob.AdapterType"/> of pre-training jobs.</summary>
    public const string JobType = "pretraining";

    public static void Enqueue(IBackgroundJobClient queue, string jobId) =>
        queue.Create<PretrainingJobRunner>(r => r.Run(jobId, CancellationToken.None), new Hangfire.States.EnqueuedState(WorkerServices.FineTuningQueue));

    [AutomaticRetry(Attempts = 0), Queue(WorkerServices.FineTuningQueue)]
    public void Run(string jobId, CancellationToken shutdown)
    {
        var job = db.Jobs.IgnoreQueryFilters().AsNoTracking().SingleOrDefault(j => j.Id == jobId && j.AdapterType == JobType);
        if (job is null || !db.SetJobStatus(jobId, JobStatus.Running, JobStatus.Queued)) return;
        using var logScope = log.BeginScope(new Dictionary<string, object> { ["JobId"] = jobId, ["Model"] = job.Model });
        string? temp = null;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(shutdown);
        try
        {
            if (db.BaseModels.Any(m => m.Id == job.Model))
            {
                Succeed(job, trainedItems: 0, row: null);   // pre-trained by an earlier job meanwhile
                return;
            }
            var builtin = builtins.Single(b => b.Id == job.Model);
            builtin.EnsureDataInstalled();
            AddEvent(jobId, $"Pre-training of {job.Model} started on {job.TrainingFile}", data: JobEventData.ForStatus(JobStatus.Running));
            temp = blobs.NewTempFolder();
            // In a training slot of its own, like a fine-tuning job that does not fuse.
            string folder = temp;
            var pretrained = trainings.RunAlone(() => builtin.Pretrain(folder, p =>
            {
                var message = new ProgressMessage(jobId, p.Step, p.TotalSteps, Epoch: 1, p.Loss, p.LearningRate, p.ItemsPerSecond, p.EtaSeconds, p.ValidLoss);
                AddEvent(jobId, $"Step {p.Step}/{p.TotalSteps}: training loss={p.Loss:0.0000}" + (p.ValidLoss is { } v ? $", validation loss={v:0.0000}" : ""),
                    "metrics", JobEventData.ForMetrics(message, p.Accuracy, p.ValidAccuracy), step: p.Step);
                // Cancelling is a status change in the database, as for fine-tuning.
                if (!StillRunning(jobId)) stop.Cancel();
            }, stop.Token), () => StillRunning(jobId), stop.Token);
            var blobPath = BlobPaths.ModelPath(job.Model);
            // A folder without a row is left from a run stopped between writing and registering: this one replaces it.
            if (Directory.Exists(blobs.Resolve(blobPath))) blobs.Delete(blobPath);
            blobs.CommitFolder(temp, blobPath);
            temp = null;
            var (tensors, _) = SafeTensors.ReadHeader(Path.Combine(blobs.Resolve(blobPath), ModelFolder.WeightsFile));
            Succeed(job, pretrained.TrainedItems, new BaseModel
            {
                Id = job.Model, Family = pretrained.Family, Description = pretrained.Description, BlobPath = blobPath,
                ParameterCount = tensors.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b)), ContextLength = pretrained.ContextLength,
                Dtype = pretrained.Dtype, Tokenizer = pretrained.Tokenizer, CreatedAt = Now(),
            });
            log.LogInformation("Pre-trained {Model}: {Description}", job.Model, pretrained.Description);
        }
        catch (OperationCanceledException) when (shutdown.IsCancellationRequested)
        {
            db.SetJobStatus(jobId, JobStatus.Queued, JobStatus.Running);   // re-queued at the next start, from scratch
            throw;
        }
        catch (OperationCanceledException)
        {
            log.LogInformation("Pre-training {JobId} stopped: it is cancelled", jobId);
        }
        catch (Exception e)
        {
            log.LogError(e, "Pre-training {JobId} failed", jobId);
            Fail(jobId, "Pre-training failed: " + e.Message);
        }
        finally
        {
            if (temp is not null && Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    bool StillRunning(string jobId) => db.Jobs.IgnoreQueryFilters().Where(j => j.Id == jobId).Select(j => j.Status).Single() == JobStatus.Running;

    /// <summary>Registers the model (unless it exists) and marks the job succeeded in one transaction, if it is still running.</summary>
    void Succeed(FineTuningJob job, long trainedItems, BaseModel? row)
    {
        using var transaction = db.Database.BeginTransaction();
        int updated = db.Jobs.IgnoreQueryFilters().Where(j => j.Id == job.Id && j.Status == JobStatus.Running).ExecuteUpdate(s => s
            .SetProperty(j => j.Status, JobStatus.Succeeded).SetProperty(j => j.FineTunedModel, job.Model)
            .SetProperty(j => j.TrainedTokens, trainedItems).SetProperty(j => j.FinishedAt, Now()));
        if (updated == 0) return;   // cancelled during the last step: the folder stays, unregistered, and a new job overwrites it
        if (row is not null && !db.BaseModels.Any(m => m.Id == row.Id))
        {
            db.BaseModels.Add(row);
            db.SaveChanges();
            AddEvent(job.Id, $"Base model registered: {row.Id}");
        }
        AddEvent(job.Id, "The job has successfully completed", data: JobEventData.ForStatus(JobStatus.Succeeded, job.Model));
        transaction.Commit();
    }

    void Fail(string jobId, string message) => db.FailJob(jobId, message, JobStatus.Running);

    void AddEvent(string jobId, string message, string type = "message", string? data = null, string level = "info", int? step = null) =>
        db.AddJobEvent(jobId, message, type, data, level, step);

    static long Now() => JobRecords.Now();
}