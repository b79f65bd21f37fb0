using System.Globalization;
using AdapterService.Core.Data;
using AdapterService.Core.Evals;
using AdapterService.Core.Grading;
using AdapterService.Core.Inference;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using AdapterService.Core.Training;
using System.Text.Json;
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
        JobLease? claimed;
        try
        {
            claimed = jobs.Claim(jobId, WorkerServices.WorkerId, options.Value.LeaseSeconds);
        }
        catch (Exception e) when (StorageFullException.IsCause(e))
        {
            // The database is on a full disk: the job is tried again later, and trains once space has come back.
            log.LogError(e, "Job {JobId}: the server's storage is full; trying the job again in {Seconds} s", jobId, options.Value.LeaseSeconds);
            queue.Schedule(JobKind.FineTuning, jobId, TimeSpan.FromSeconds(options.Value.LeaseSeconds));
            return;
        }
        if (claimed is not { } lease)
        {
            // Another worker holds the job. Look again when its lease could have run out, in case that worker died.
            if (jobs.StatusOf(jobId) == JobStatus.Running) queue.Schedule(JobKind.FineTuning, jobId, TimeSpan.FromSeconds(options.Value.LeaseSeconds));
            return;
        }

        using var run = JobTracing.StartRun(job, "fine_tuning");   // a span of the trace of the request that created the job
        // Stops training at the next step when the job is no longer running (cancelled, paused) or the host stops.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(shutdown);
        TrainingSession? session = null;
        TrainerStates? states = null;
        List<TrainingSession> members = [];
        try
        {
            var baseModel = db.BaseModels.AsNoTracking().Single(m => m.Id == job.Model);
            if (Sweep.Of(job) is { } sweep)
            {
                // One JobData for every member: the same files, read, tokenized and warned about once.
                var data = new JobData(job, baseModel, db, blobs, jobs, engine);
                members = [.. sweep.Values.Select((_, m) => new TrainingSession(job, jobs, lease, data,
                    new TrainerStates(blobs, m), blobs, options.Value, quotas.Value, stop, CheckpointScoring.For(job, db, blobs, engine, jobs, m), sweepMember: m))];
                session = members[0];
                RunSweep(job, lease, baseModel, sweep, members, stop);
                return;
            }
            states = new TrainerStates(blobs);
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
        catch (Exception e) when (StorageFullException.IsCause(e))
        {
            // The server's disk, not the job: paused, keeping its saved states (what failed to save left nothing
            // behind), so a resume once space returns continues where it can. The message names no server path.
            log.LogError(e, "Job {JobId}: the server's storage is full; pausing it", jobId);
            string from = states?.NewestStep(jobId) is { } saved ? $"its trainer state saved at step {saved}" : members.Count > 0 ? "its last saved states" : "the start";
            string message = $"Fine-tuning job paused at step {session?.Trainer?.Step ?? 0}: the server's storage is full (disk full), so its progress could not be saved. "
                             + $"Resume it once space is freed; it continues from {from}.";
            try
            {
                jobs.PauseForFullStorage(jobId, message);
            }
            catch (Exception recording) when (StorageFullException.IsCause(recording))
            {
                // The database is on the full disk too: the job stays running under a lease that runs out; a run scheduled
                // for then claims it and continues from its saved state (or finds the disk still full, and is scheduled again).
                log.LogError(recording, "Job {JobId}: the pause could not be recorded either; trying the job again in {Seconds} s", jobId, options.Value.LeaseSeconds);
                queue.Schedule(JobKind.FineTuning, jobId, TimeSpan.FromSeconds(options.Value.LeaseSeconds));
            }
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            log.LogError(e, "Job {JobId} failed", jobId);
            jobs.Fail(jobId, e is InvalidDataException or SafeTensorsException or ArgumentException or TrainingFileException or TrainingDivergedException or GraderException
                ? e.Message : "Training failed: " + e.Message, JobStatus.Queued, JobStatus.Running);
        }
        finally
        {
            if (members.Count > 0) foreach (var member in members) member.Dispose();
            else session?.Dispose();
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
    /// A sweep: its members train fused over one copy of the base (<see cref="FusionHost.TrainTogether"/>); when they have
    /// ended, each is scored by its last validation loss (the lowest wins) or, with an eval, by the mean grade of the
    /// sweep's criterion on its adapter (its checkpoints were scored as they were saved; the highest wins,
    /// <see cref="Sweep.Best"/>), and the winner's adapter becomes the job's fine-tuned model.
    /// A member that failed (diverged at a high learning rate, say) is reported and left out; the job fails only when
    /// every member did. The trained tokens are all members' together.
    /// </summary>
    void RunSweep(FineTuningJob job, JobLease lease, BaseModel baseModel, Sweep sweep, List<TrainingSession> members, CancellationTokenSource stop)
    {
        string folder = blobs.Resolve(baseModel.BlobPath);
        members[0].Files.Texts();   // read and tokenized here (the members share them), not on the group's thread between its steps
        var outcomes = fusion.TrainTogether(baseModel.Id, () => (CausalLanguageModel)ModelFolder.Load(folder, precision), members,
            members[0].ShouldContinue, stop.Token);
        // Stopped (cancelled, paused, shut down): each member keeps its state as a job alone does, then the job stops.
        if (outcomes.FirstOrDefault(o => o.Error is OperationCanceledException).Error is { } stopped)
        {
            foreach (var (member, outcome) in members.Zip(outcomes))
                try { member.KeepingState(() => throw outcome.Error as OperationCanceledException ?? new OperationCanceledException()); }
                catch (OperationCanceledException) { }
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(stopped);
        }
        // A full disk is the server's, not a member's: the whole job pauses (Run), each member keeping its saved states.
        if (outcomes.FirstOrDefault(o => StorageFullException.IsCause(o.Error)).Error is { } full) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(full);
        var finished = new List<(int Member, double? ValidLoss, double? EvalScore)>();
        bool keepBest = sweep.Criterion is not null && EvalAttachment.FromJson(job.EvalSettings!).KeepBest is not null;
        var checkpoints = sweep.Criterion is null ? [] : db.Checkpoints.AsNoTracking().Where(c => c.JobId == job.Id).ToList();
        for (int m = 0; m < members.Count; m++)
        {
            var (result, error) = outcomes[m];
            if (error is not null)
            {
                log.LogWarning(error, "Job {JobId}: sweep member {Member} failed", job.Id, m + 1);
                jobs.AddEvent(job.Id, $"Sweep {sweep.Label(m)} failed: {(error is TrainingDivergedException or InvalidDataException or ArgumentException ? error.Message : "training failed")}", level: "warn");
                continue;
            }
            var (score, scored) = sweep.EvalScoreOf(checkpoints.Where(c => c.SweepMember == m), keepBest);
            finished.Add((m, members[m].LastValidLoss, score));
            string scoreText = sweep.Criterion is not { } criterion ? ""
                : $", mean '{criterion}' grade={(score is { } s ? s.ToString("0.0000", CultureInfo.InvariantCulture) : "none (not scored)")}" + (keepBest && scored is not null ? $" (its checkpoint at step {scored.StepNumber})" : "");
            jobs.AddEvent(job.Id, $"Sweep {sweep.Label(m)} finished: training loss={members[m].LastTrainLoss:0.0000}, validation loss={Loss(members[m].LastValidLoss)}{scoreText}",
                data: JsonSerializer.Serialize(new
                {
                    sweep_member = m, hyperparameters = sweep.Shown(job, m), train_loss = members[m].LastTrainLoss, valid_loss = members[m].LastValidLoss,
                    eval_score = score, eval_checkpoint = score is null ? null : scored?.Name,
                }));
        }
        if (finished.Count == 0) System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(outcomes[0].Error!);
        int best = sweep.Best(finished) ?? finished[0].Member;
        var winner = finished.Single(f => f.Member == best);
        jobs.AddEvent(job.Id, sweep.Criterion is { } by
                ? $"Sweep: {sweep.Label(best)} has the highest mean '{by}' grade ({(winner.EvalScore is { } w ? w.ToString("0.0000", CultureInfo.InvariantCulture) : "none")}); its adapter is the fine-tuned model"
                : $"Sweep: {sweep.Label(best)} has the lowest validation loss ({Loss(members[best].LastValidLoss)}); its adapter is the fine-tuned model",
            data: JsonSerializer.Serialize(new { sweep_best = best, hyperparameters = sweep.Shown(job, best), valid_loss = members[best].LastValidLoss, eval_score = winner.EvalScore }));
        long tokens = finished.Sum(f => outcomes[f.Member].Result!.TrainedTokens);
        var adapter = members[best].SaveAdapter();
        if (!jobs.Succeed(lease, adapter.Name, tokens, adapter: adapter, sweep: sweep with { BestMember = best }))
        {
            blobs.Delete(adapter.BlobPath);
            log.LogInformation("Job {JobId} finished its sweep but is {Status}; its adapter is not registered", job.Id, jobs.StatusOf(job.Id));
            return;
        }
        foreach (var m in Enumerable.Range(0, members.Count)) new TrainerStates(blobs, m).DeleteAll(job.Id);
    }

    /// <summary>A validation loss in an event: 4 decimals, or "none" for a sweep without a validation file.</summary>
    static string Loss(double? loss) => loss is { } l ? l.ToString("0.0000", CultureInfo.InvariantCulture) : "none";

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
