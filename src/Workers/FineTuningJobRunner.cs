using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Training;
using Hangfire;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace AdapterService.Workers;

/// <summary><c>Workers:StateEverySteps</c>: how often a job saves the state it resumes from after a crash (also at every epoch's end).</summary>
public sealed class TrainingOptions
{
    public int StateEverySteps { get; set; } = 25;
    /// <summary><c>Workers:LeaseSeconds</c>: how long a job stays claimed by a worker that stopped renewing it.</summary>
    public int LeaseSeconds { get; set; } = 60;
    /// <summary><c>Workers:Speed</c>: how language-model jobs compute their steps (packing, micro-batches, bf16, checkpointing).</summary>
    public TrainingSpeedOptions Speed { get; set; } = new();
}

/// <summary>Counts epochs without a new lowest validation loss; says stop after <c>patience</c> of them (never without one).</summary>
sealed class EarlyStopping(int? patience)
{
    double best = double.PositiveInfinity;
    int worse;

    public bool ShouldStop(double validLoss)
    {
        if (validLoss < best) (best, worse) = (validLoss, 0);
        else worse++;
        return patience is { } p && worse >= p;
    }
}

/// <summary>
/// The Hangfire job that trains one fine-tuning job. It takes the job id only and is safe to run twice: a finished
/// or paused job is a no-op, and an interrupted one (crash, shutdown, pause) continues from its last saved state.
/// </summary>
public sealed partial class FineTuningJobRunner(ServiceDbContext db, IBlobStore blobs, IBackgroundJobClient queue, IOptions<TrainingOptions> options,
    FusionHost fusion, ILogger<FineTuningJobRunner> log)
{
    /// <summary>Learning rate for a learning_rate_multiplier of 1.</summary>
    public const double BaseLearningRate = JobSpecification.BaseLearningRate;

    [AutomaticRetry(Attempts = 0), Queue(WorkerServices.FineTuningQueue)]
    public void Run(string jobId, CancellationToken shutdown)
    {
        var job = db.Jobs.AsNoTracking().SingleOrDefault(j => j.Id == jobId);
        if (job is null || JobStatus.IsFinished(job.Status)) return;
        using var logScope = log.BeginScope(new Dictionary<string, object> { ["JobId"] = jobId, ["ProjectId"] = job.ProjectId });
        if (!Claim(jobId))
        {
            // Another worker holds the job. Look again when its lease could have run out, in case that worker died.
            if (CurrentStatus(jobId) == JobStatus.Running)
                queue.Schedule<FineTuningJobRunner>(r => r.Run(jobId, CancellationToken.None), TimeSpan.FromSeconds(options.Value.LeaseSeconds));
            return;
        }

        // Stops training at the next step when the job is no longer running (cancelled, paused) or the host stops.
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(shutdown);
        AdapterTrainer? trainer = null;
        try
        {
            var (adapter, result) = Train(job, stop, t => trainer = t);
            Succeed(job, adapter, result);
        }
        catch (OperationCanceledException) when (leaseLost)
        {
            log.LogWarning("Job {JobId}: another worker claimed it (this one was too slow to renew); stopping without saving", jobId);
        }
        catch (OperationCanceledException)
        {
            // Train saved the state already (unless cancelled, or stopped while waiting for a turn to train); a resume,
            // a re-queue or a restart continues from it.
            if (shutdown.IsCancellationRequested && db.SetJobStatus(jobId, JobStatus.Queued, JobStatus.Running))
            {
                log.LogInformation("Job {JobId} interrupted by shutdown at step {Step}; it continues when re-queued", jobId, trainer?.Step ?? 0);
                throw;
            }
            log.LogInformation("Job {JobId} stopped at step {Step}: it is {Status}", jobId, trainer?.Step ?? 0, CurrentStatus(jobId));
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            log.LogError(e, "Job {JobId} failed", jobId);
            Fail(jobId, e is InvalidDataException or SafeTensorsException or ArgumentException or TrainingFileException or TrainingDivergedException ? e.Message : "Training failed: " + e.Message);
        }
        finally
        {
            trainer?.Dispose();
        }
    }

    (Adapter Adapter, TrainingResult Result) Train(FineTuningJob job, CancellationTokenSource stop, Action<AdapterTrainer> started)
    {
        var baseModel = db.BaseModels.AsNoTracking().Single(m => m.Id == job.Model);
        // As the job was specified at creation: its adapter, and its learning rate from the multiplier.
        var (config, hp) = JobSpecification.Of(job);
        string folder = blobs.Resolve(baseModel.BlobPath);
        AdapterTrainer? trainer = null;
        TrainableAdapter? adapter = null;

        // Until the job trains, it waits for a slot (or a group to join) with its lease renewed and its status watched.
        bool Waiting()
        {
            StopUnlessRunning(job.Id, stop);
            return !stop.IsCancellationRequested;
        }

        try
        {
            TrainingResult result;
            if (fusion.MaxFusedJobs > 1 && typeof(CausalLanguageModel).IsAssignableFrom(ModelConfig.Load(Path.Combine(folder, ModelFolder.ConfigFile)).ModelClass))
            {
                var examples = JobFiles.LoadTokenized(db, blobs, job.TrainingFile, baseModel);
                var validation = job.ValidationFile is null ? null : JobFiles.LoadTokenized(db, blobs, job.ValidationFile, baseModel);
                int fusedWith = 0;
                result = KeepingState(job.Id, () => trainer, () => fusion.Train(baseModel.Id, () => (CausalLanguageModel)ModelFolder.Load(folder), model =>
                {
                    // On the group's thread, between its steps: the job's adapter and trainer over the group's copy of the base.
                    adapter = TrainableAdapter.Create(model, config, job.Seed);
                    var lm = new LanguageModelTrainer(model, adapter, examples, hp, padId: 0, job.Seed, options.Value.Speed);   // padding is never trained on
                    trainer = lm;
                    started(lm);
                    var onStep = Begin(job, lm, adapter, config, examples.Count, validation is null ? null : () => lm.Evaluate(validation), stop);
                    return new FusedMember(lm, (p, others) =>
                    {
                        if (others != fusedWith && p.Step > 0)
                            AddEvent(job.Id, others > 0
                                ? $"Training fused with {others} other job(s) on {baseModel.Id} from step {p.Step}: one copy of the base, this job's own adapter, optimizer and data"
                                : $"Training alone from step {p.Step}: the jobs it was fused with have left");
                        fusedWith = others;
                        onStep(p);
                    });
                }, Waiting, stop.Token));
            }
            else result = fusion.RunAlone(() =>
            {
                using var model = ModelFolder.Load(folder);
                adapter = TrainableAdapter.Create(model, config, job.Seed);
                Func<(double Loss, double Accuracy)>? evaluate = null;
                int exampleCount;
                if (model is ViTForImageClassification vit)
                {
                    // An adapter with its own labels classifies into them; otherwise into the base's.
                    var labels = config.Labels ?? vit.Config.Labels;
                    var examples = JobFiles.LoadImages(db, blobs, job.TrainingFile, vit.Config, labels);
                    var validation = job.ValidationFile is null ? null : JobFiles.LoadImages(db, blobs, job.ValidationFile, vit.Config, labels);
                    var classifier = new ClassificationTrainer(vit, adapter, examples, hp, job.Seed);
                    if (validation is not null) evaluate = () => classifier.Evaluate(validation);
                    (trainer, exampleCount) = (classifier, examples.Count);
                }
                else
                {
                    var languageModel = model as CausalLanguageModel ?? throw new InvalidDataException($"{baseModel.Id} is neither a language model nor an image classifier");
                    var examples = JobFiles.LoadTokenized(db, blobs, job.TrainingFile, baseModel);
                    var validation = job.ValidationFile is null ? null : JobFiles.LoadTokenized(db, blobs, job.ValidationFile, baseModel);
                    var lm = new LanguageModelTrainer(languageModel, adapter, examples, hp, padId: 0, job.Seed, options.Value.Speed);   // padding is never trained on
                    if (validation is not null) evaluate = () => lm.Evaluate(validation);
                    (trainer, exampleCount) = (lm, examples.Count);
                }
                started(trainer);
                var onStep = Begin(job, trainer, adapter, config, exampleCount, evaluate, stop);
                return KeepingState(job.Id, () => trainer, () => trainer.Run(onStep, stop.Token));
            }, Waiting, stop.Token);
            return (Register(job, adapter!), result);
        }
        finally
        {
            adapter?.Dispose();
        }
    }

    /// <summary>
    /// Starts or resumes the job's run on <paramref name="trainer"/> (its events, its saved state, the early-stopping
    /// history) and returns what runs after each step: events once per step, checkpoints, state, early stopping, and
    /// the status check that stops the job within a step of a cancel or pause. Shared by fused and unfused runs.
    /// </summary>
    Action<TrainingProgress> Begin(FineTuningJob job, AdapterTrainer trainer, TrainableAdapter adapter, AdapterConfig config, int exampleCount,
        Func<(double Loss, double Accuracy)>? evaluate, CancellationTokenSource stop)
    {
        if (LatestState(job.Id) is { } state)
        {
            trainer.LoadState(state);
            AddEvent(job.Id, $"Fine-tuning job resumed from step {trainer.Step}", data: JobEventData.ForStatus(JobStatus.Running));
        }
        else AddEvent(job.Id, $"Fine-tuning job started: {adapter.ParameterCount:N0} {config.Method} parameters, {exampleCount} examples, {trainer.TotalSteps} steps",
            data: JobEventData.ForStatus(JobStatus.Running));

        // Steps redone after a crash were reported the first time already: report each step once.
        int reported = db.JobEvents.Where(e => e.JobId == job.Id && e.Type == "metrics").Select(e => (int?)e.Step).Max() ?? 0;
        var stopping = new EarlyStopping(job.EarlyStoppingPatience);
        // A resumed run remembers the validation losses of the epochs before it, so it stops where an uninterrupted one would.
        foreach (var metrics in db.Checkpoints.Where(c => c.JobId == job.Id && c.StepNumber <= trainer.Step).OrderBy(c => c.StepNumber).Select(c => c.Metrics).ToList())
            if (JsonDocument.Parse(metrics).RootElement.TryGetProperty("valid_loss", out var loss) && loss.ValueKind == JsonValueKind.Number
                && stopping.ShouldStop(loss.GetDouble()))
                trainer.StopAfterThisStep();
        if (!Renew(job.Id)) throw new OperationCanceledException("another worker holds the job");   // loading may have taken a while
        return p =>
        {
            bool epochEnd = p.Step % trainer.StepsPerEpoch == 0;
            var valid = epochEnd && evaluate is not null ? evaluate() : ((double Loss, double Accuracy)?)null;
            if (p.Step > reported) Report(job, p, valid, adapter.Statistics());
            if (epochEnd) SaveCheckpoint(job, trainer, p, valid);
            else if (p.Step % options.Value.StateEverySteps == 0) SaveState(job.Id, trainer);
            if (valid is { } v && stopping.ShouldStop(v.Loss))
            {
                AddEvent(job.Id, $"Early stopping at step {p.Step}: the validation loss has not improved for {job.EarlyStoppingPatience} epoch(s)");
                trainer.StopAfterThisStep();
            }
            // Cancel, pause and resume are status changes in the database, so they reach a worker in any process within a step.
            StopUnlessRunning(job.Id, stop);
        };
    }

    /// <summary>
    /// Registers the adapter and marks the job succeeded in one transaction, only if it is still running under this
    /// worker's lease; otherwise (cancelled, paused or taken over during the last step) the adapter is dropped and the
    /// job keeps its status (a paused one finishes from its saved state when resumed).
    /// </summary>
    void Succeed(FineTuningJob job, Adapter adapter, TrainingResult result)
    {
        using (var transaction = db.Database.BeginTransaction())
        {
            var updated = db.Jobs.Where(j => j.Id == job.Id && j.Status == JobStatus.Running && j.LeaseOwner == Worker).ExecuteUpdate(s => s
                .SetProperty(j => j.Status, JobStatus.Succeeded)
                .SetProperty(j => j.FineTunedModel, adapter.Name)
                .SetProperty(j => j.TrainedTokens, result.TrainedTokens)
                .SetProperty(j => j.FinishedAt, Now()));
            if (updated == 0)
            {
                transaction.Rollback();
                blobs.Delete(adapter.BlobPath);
                log.LogInformation("Job {JobId} finished training but is {Status}; its adapter is not registered", job.Id, CurrentStatus(job.Id));
                return;
            }
            db.Adapters.Add(adapter);
            db.SaveChanges();
            // In the same transaction: whoever sees the job succeeded also sees its last events.
            AddEvent(job.Id, $"New fine-tuned model created: {adapter.Name}");
            AddEvent(job.Id, "The job has successfully completed", data: JobEventData.ForStatus(JobStatus.Succeeded, adapter.Name));
            transaction.Commit();
        }
        db.ChangeTracker.Clear();
        blobs.Delete(BlobPaths.TrainerStatePath(job.Id));
    }

    void Fail(string jobId, string message) => db.FailJob(jobId, message, JobStatus.Queued, JobStatus.Running);

    public static string FineTunedModelName(FineTuningJob job) => $"ft:{job.Model}:{job.Suffix ?? ""}:{job.Id}";

    string CurrentStatus(string jobId) => db.Jobs.Where(j => j.Id == jobId).Select(j => j.Status).Single();

    static readonly string Worker = $"{Environment.MachineName}:{Environment.ProcessId}:{Guid.NewGuid():N}";
    long renewedAt;
    bool leaseLost;

    /// <summary>Takes the job if it is queued, or running under a lease that ran out (its worker died).</summary>
    bool Claim(string jobId)
    {
        long now = Now(), until = now + options.Value.LeaseSeconds;
        renewedAt = now;
        return db.Jobs.Where(j => j.Id == jobId && (j.Status == JobStatus.Queued || j.Status == JobStatus.Running && (j.LeaseUntil == null || j.LeaseUntil < now)))
            .ExecuteUpdate(s => s.SetProperty(j => j.Status, JobStatus.Running).SetProperty(j => j.LeaseOwner, Worker).SetProperty(j => j.LeaseUntil, until)) > 0;
    }

    /// <summary>Extends this worker's lease (every third of its length); false once another worker holds the job.</summary>
    bool Renew(string jobId)
    {
        long now = Now();
        if (now - renewedAt < options.Value.LeaseSeconds / 3) return true;
        renewedAt = now;
        long until = now + options.Value.LeaseSeconds;
        leaseLost = db.Jobs.Where(j => j.Id == jobId && j.LeaseOwner == Worker).ExecuteUpdate(s => s.SetProperty(j => j.LeaseUntil, until)) == 0;
        return !leaseLost;
    }

    void AddEvent(string jobId, string message, string type = "message", string? data = null, string level = "info", int? step = null) =>
        db.AddJobEvent(jobId, message, type, data, level, step);

    /// <summary>Stops the job's training (through <paramref name="stop"/>) once it is no longer running here: cancelled, paused, or its lease lost.</summary>
    void StopUnlessRunning(string jobId, CancellationTokenSource stop)
    {
        if (CurrentStatus(jobId) != JobStatus.Running || !Renew(jobId)) stop.Cancel();
    }

    static long Now() => JobRecords.Now();
}