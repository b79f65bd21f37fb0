using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Pretraining;
using AdapterService.Core.Storage;
using AdapterService.Core.Telemetry;
using AdapterService.Core.Training;
using Hangfire;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace AdapterService.Workers;

/// <summary>
/// The Hangfire job that pre-trains a built-in base model. It is a fine-tuning job row of type <see cref="JobKinds.PretrainingType"/>, so
/// its progress goes the same way as fine-tuning's: metrics and status events in <c>job_events</c>, which the API's relay
/// pushes as SignalR <c>progress</c> and <c>status</c> messages and <c>GET /v1/fine_tuning/jobs/{id}/events</c> lists.
/// It writes the model to the blob store as a Hugging Face folder and registers it as a base model, whose id becomes the
/// job's <c>fine_tuned_model</c>. There is no state to resume from: a pre-training stopped by shutdown starts over.
/// </summary>
public sealed class PretrainingJobRunner(ServiceDbContext db, JobLifecycle jobs, IBlobStore blobs, IEnumerable<IPretrainedBuiltin> builtins, FusionHost trainings,
    IJobQueue queue, IOptions<TrainingOptions> options, ILogger<PretrainingJobRunner> log)
{
    [AutomaticRetry(Attempts = 0), Queue(WorkerServices.FineTuningQueue)]
    public void Run(string jobId, CancellationToken shutdown)
    {
        var job = jobs.Find(jobId);
        if (job is null || JobKinds.Of(job) != JobKind.Pretraining || JobStatus.IsFinished(job.Status)) return;
        using var logScope = log.BeginScope(new Dictionary<string, object> { ["JobId"] = jobId, ["Model"] = job.Model });
        // The same lease as a fine-tuning job's: a worker that died loses the job to the next one that fetches it.
        if (jobs.Claim(jobId, WorkerServices.WorkerId, options.Value.LeaseSeconds) is not { } lease)
        {
            if (jobs.StatusOf(jobId) == JobStatus.Running) queue.Schedule(JobKind.Pretraining, jobId, TimeSpan.FromSeconds(options.Value.LeaseSeconds));
            return;
        }
        using var run = JobTracing.StartRun(job, "pretraining");
        string? temp = null;
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(shutdown);
        try
        {
            if (db.BaseModels.Any(m => m.Id == job.Model))
            {
                Succeed(job, lease, trainedItems: 0, row: null);   // pre-trained by an earlier job meanwhile
                return;
            }
            var builtin = builtins.Single(b => b.Id == job.Model);
            builtin.EnsureDataInstalled();
            jobs.AddEvent(jobId, $"Pre-training of {job.Model} started on {job.TrainingFile}", data: JobEventData.ForStatus(JobStatus.Running));
            temp = blobs.NewTempFolder();
            // In a training slot of its own, like a fine-tuning job that does not fuse.
            string folder = temp;
            var processStats = new ProcessSampler();
            var pretrained = trainings.RunAlone(() => builtin.Pretrain(folder, p =>
            {
                jobs.Progress(new ProgressMessage(jobId, p.Step, p.TotalSteps, Epoch: 1, p.Loss, p.Accuracy, p.ValidLoss, p.ValidAccuracy, p.LearningRate,
                        p.ItemsPerSecond, p.EtaSeconds, Worker: processStats.Sample()),
                    $"Step {p.Step}/{p.TotalSteps}: training loss={p.Loss:0.0000}" + (p.ValidLoss is { } v ? $", validation loss={v:0.0000}" : ""));
                // Cancelling is a status change in the database, as for fine-tuning.
                if (!StillRunning(lease)) stop.Cancel();
            }, stop.Token), () => StillRunning(lease), stop.Token);
            // A folder without a row is left from a run stopped between writing and registering: this one replaces it.
            var blobPath = BlobPaths.ModelPath(job.Model);
            blobs.CommitFolder(temp, blobPath, replace: true);
            temp = null;
            var (tensors, _) = SafeTensors.ReadHeader(Path.Combine(blobs.Resolve(blobPath), ModelFolder.WeightsFile));
            Succeed(job, lease, pretrained.TrainedItems, new BaseModel
            {
                Id = job.Model, Family = pretrained.Family, Description = pretrained.Description, BlobPath = blobPath,
                ParameterCount = tensors.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b)), ContextLength = pretrained.ContextLength,
                Dtype = pretrained.Dtype, Tokenizer = pretrained.Tokenizer, CreatedAt = JobLifecycle.Now(),
            });
            log.LogInformation("Pre-trained {Model}: {Description}", job.Model, pretrained.Description);
        }
        catch (OperationCanceledException) when (lease.Lost)
        {
            log.LogWarning("Pre-training {JobId}: another worker claimed it (this one was too slow to renew); stopping", jobId);
        }
        catch (OperationCanceledException) when (shutdown.IsCancellationRequested)
        {
            // Re-queued at the next start, from scratch.
            jobs.Transition(jobId, [JobStatus.Running], JobStatus.Queued, "Pre-training job interrupted by shutdown; it starts over when re-queued");
            throw;
        }
        catch (OperationCanceledException)
        {
            log.LogInformation("Pre-training {JobId} stopped: it is cancelled", jobId);
        }
        catch (Exception e)
        {
            log.LogError(e, "Pre-training {JobId} failed", jobId);
            // A full disk fails it (pre-training keeps no state to pause with) with the storage message, no server path.
            jobs.Fail(jobId, "Pre-training failed: " + (StorageFullException.IsCause(e) ? StorageFullException.Text : e.Message), JobStatus.Running);
        }
        finally
        {
            if (temp is not null && Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
            lease.Release();
            if (run is not null) JobTracing.Ended(run, "pretraining", jobs.StatusOf(jobId));
        }
    }

    /// <summary>Whether the job still runs here (not cancelled, lease renewed).</summary>
    bool StillRunning(JobLease lease) => jobs.StatusOf(lease.JobId) == JobStatus.Running && lease.Renew();

    /// <summary>
    /// Registers the model (unless it exists) and marks the job succeeded in one transaction, if it is still running
    /// here; if not (cancelled during the last step), the folder stays, unregistered, and a new job overwrites it.
    /// </summary>
    void Succeed(FineTuningJob job, JobLease lease, long trainedItems, BaseModel? row) => jobs.Succeed(lease, job.Model, trainedItems, baseModel: row);
}
