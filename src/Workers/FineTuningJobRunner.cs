using AdapterService.Core.Data;
using AdapterService.Core.Grading;
using AdapterService.Core.Inference;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using AdapterService.Core.Training;
using Hangfire;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace AdapterService.Workers;

/// <summary>
/// The Hangfire job that trains one fine-tuning job. It takes the job id only and is safe to run twice: a finished
/// or paused job is a no-op, and an interrupted one (crash, shutdown, pause) continues from its last saved state.
/// It claims the job, hands its run to a <see cref="TrainingSession"/> (fused with other jobs on the same base, or
/// alone) and records the outcome; every write to the job's record goes through <see cref="JobLifecycle"/>.
/// </summary>
public sealed class FineTuningJobRunner(ServiceDbContext db, JobLifecycle jobs, IBlobStore blobs, IJobQueue queue, IOptions<TrainingOptions> options, IOptions<QuotaOptions> quotas,
    FusionHost fusion, BasePrecision precision, InferenceEngine engine, ILogger<FineTuningJobRunner> log)
{
    /// <summary>The precision it loads bases in (<c>Models:Precision</c>, the one the serving engine uses).</summary>
    public BasePrecision Precision => precision;

    /// <summary>Times each job in this process let another project's go first, in a row (<see cref="FairTurns"/>).</summary>
    static readonly System.Collections.Concurrent.ConcurrentDictionary<string, int> deferrals = new();

    /// <summary>
    /// Puts the job back at the end of the queue when another project waits with fewer jobs running (<see cref="FairTurns"/>);
    /// the worker then takes the next job.
    /// </summary>
    bool YieldsTurn(FineTuningJob job)
    {
        var (running, waiting) = jobs.Turns(job.Id);
        if (!FairTurns.ShouldDefer(job.ProjectId, running, waiting) || deferrals.GetValueOrDefault(job.Id) >= FairTurns.MaxDeferrals)
        {
            deferrals.TryRemove(job.Id, out _);
            return false;
        }
        deferrals.AddOrUpdate(job.Id, 1, (_, n) => n + 1);
        queue.Enqueue(JobKind.FineTuning, job.Id);
        return true;
    }

    [AutomaticRetry(Attempts = 0), Queue(WorkerServices.FineTuningQueue)]
    public void Run(string jobId, CancellationToken shutdown)
    {
        var job = jobs.Find(jobId);
        if (job is null || JobStatus.IsFinished(job.Status)) return;
        using var logScope = log.BeginScope(new Dictionary<string, object> { ["JobId"] = jobId, ["ProjectId"] = job.ProjectId });
        if (job.Status == JobStatus.Queued && YieldsTurn(job)) return;
        if (jobs.Claim(jobId, WorkerServices.WorkerId, options.Value.LeaseSeconds) is not { } lease)
        {
            // Another worker holds the job. Look again when its lease could have run out, in case that worker died.
            if (jobs.StatusOf(jobId) == JobStatus.Running) queue.Schedule(JobKind.FineTuning, jobId, TimeSpan.FromSeconds(options.Value.LeaseSeconds));
            return;
        }

        using var run = JobTracing.StartRun(job, "fine_tuning");   // a span of the trace of the request that created the job
        // Stops training at the next step when the job is no longer running (cancelled, paused) or the host stops.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(shutdown);
        TrainingSession? session = null;
        try
        {
            var baseModel = db.BaseModels.AsNoTracking().Single(m => m.Id == job.Model);
            var states = new TrainerStates(blobs);
            session = new TrainingSession(job, jobs, lease, new JobData(job, baseModel, db, blobs, jobs, engine), states, blobs, options.Value, quotas.Value, stop,
                CheckpointScoring.For(job, db, blobs, engine, jobs));
            var result = Train(baseModel, session, stop);
            Succeed(job, lease, session.SaveAdapter(), result, states);
        }
        catch (OperationCanceledException) when (lease.Lost)
        {
            log.LogWarning("Job {JobId}: another worker claimed it (this one was too slow to renew); stopping without saving", jobId);
        }
        catch (OperationCanceledException)
        {
            // The session saved the state already (unless cancelled, or stopped while waiting for a turn to train); a
            // resume, a re-queue or a restart continues from it.
            if (shutdown.IsCancellationRequested && jobs.Transition(jobId, [JobStatus.Running], JobStatus.Queued,
                    "Fine-tuning job interrupted by shutdown; it continues from its last saved state when re-queued"))
            {
                log.LogInformation("Job {JobId} interrupted by shutdown at step {Step}; it continues when re-queued", jobId, session?.Trainer?.Step ?? 0);
                throw;
            }
            log.LogInformation("Job {JobId} stopped at step {Step}: it is {Status}", jobId, session?.Trainer?.Step ?? 0, jobs.StatusOf(jobId));
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            log.LogError(e, "Job {JobId} failed", jobId);
            jobs.Fail(jobId, e is InvalidDataException or SafeTensorsException or ArgumentException or TrainingFileException or TrainingDivergedException or GraderException
                ? e.Message : "Training failed: " + e.Message, JobStatus.Queued, JobStatus.Running);
        }
        finally
        {
            session?.Dispose();
            lease.Release();
            if (run is not null) JobTracing.Ended(run, "fine_tuning", jobs.StatusOf(jobId));
        }
    }

    /// <summary>
    /// Language-model jobs of an objective that fuses train in a fused group over one copy of their base (when fusion is
    /// on); the others (image classifiers, objectives that do not fuse) alone, in a slot of their own. Until the job trains, its session keeps its lease and watches its status.
    /// </summary>
    TrainingResult Train(BaseModel baseModel, TrainingSession session, CancellationTokenSource stop)
    {
        string folder = blobs.Resolve(baseModel.BlobPath);
        var objective = JobObjectives.Of(session.Job);
        if (fusion.MaxFusedJobs > 1 && objective.Fuses && typeof(CausalLanguageModel).IsAssignableFrom(ModelConfig.Load(Path.Combine(folder, ModelFolder.ConfigFile)).ModelClass))
        {
            objective.Preload(session.Job, session.Files);   // read and tokenized here, not on the group's thread between its steps
            return session.KeepingState(() => fusion.Train(baseModel.Id, () => (CausalLanguageModel)ModelFolder.Load(folder, precision), session, stop.Token));
        }
        return fusion.RunAlone(() =>
        {
            using var model = ModelFolder.Load(folder, precision);
            var trainer = session.Start(model);
            return session.KeepingState(() => trainer.Run(session.AfterStep, stop.Token));
        }, session.ShouldContinue, stop.Token);
    }

    /// <summary>
    /// Registers the adapter and marks the job succeeded, only if it is still running under this worker's lease;
    /// otherwise (cancelled, paused or taken over during the last step) the adapter is dropped and the job keeps its
    /// status (a paused one finishes from its saved state when resumed).
    /// </summary>
    void Succeed(FineTuningJob job, JobLease lease, Adapter adapter, TrainingResult result, TrainerStates states)
    {
        if (!jobs.Succeed(lease, adapter.Name, result.TrainedTokens, adapter: adapter))
        {
            blobs.Delete(adapter.BlobPath);
            log.LogInformation("Job {JobId} finished training but is {Status}; its adapter is not registered", job.Id, jobs.StatusOf(job.Id));
            return;
        }
        states.DeleteAll(job.Id);
    }
}
