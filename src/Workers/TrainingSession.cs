using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Telemetry;
using AdapterService.Core.Training;
using static TorchSharp.torch;

namespace AdapterService.Workers;

/// <summary>
/// One fine-tuning job's run in this worker: it owns the job's adapter and trainer, its early stopping, checkpoints and
/// state saves, and the lease under which it trains. A fused group drives it through <see cref="IFusedSession"/>; an
/// unfused run steps its trainer with <see cref="AfterStep(TrainingProgress)"/>. Its writes to the job's record go
/// through <see cref="JobLifecycle"/>; it stops the run (through <c>stop</c>) within a step of a cancel or pause, which
/// are status changes in the database, so they reach a worker in any process.
/// A sweep's job has one session per member (<paramref name="sweepMember"/>, 0-based): each with its member's
/// hyperparameters, its own trainer states and checkpoints, and its events and metrics marked with the member.
/// </summary>
sealed class TrainingSession(FineTuningJob job, JobLifecycle jobs, JobLease lease, JobData files, TrainerStates states, IBlobStore blobs,
    TrainingOptions options, QuotaOptions quotas, CancellationTokenSource stop, CheckpointScoring? scoring = null, int? sweepMember = null) : IFusedSession, IDisposable
{
    // As the job was specified at creation: its adapter and its learning rate from the multiplier (a sweep member's own).
    readonly (AdapterConfig Config, Hyperparameters Hp) spec = sweepMember is { } m
        ? (AdapterConfig.Parse(job.AdapterConfigOf(m)), Sweep.Of(job)!.HyperparametersOf(job, m))
        : JobSpecification.Of(job);
    // "Sweep member 2 (learning_rate_multiplier=1): " before a member's events.
    readonly string prefix = sweepMember is { } member ? $"Sweep {Sweep.Of(job)!.Label(member)}: " : "";
    readonly EarlyStopping stopping = new(job.EarlyStoppingPatience);
    /// <summary>CPU and memory of this process between two reports, sent with each step's progress.</summary>
    readonly ProcessSampler processStats = new();
    readonly string fineTunedModel = ModelNames.FineTuned(job.Model, job.Suffix, job.Id);
    TrainableAdapter? adapter;
    ObjectiveTrainer? run;
    int reported, fusedWith;

    public AdapterTrainer? Trainer => run?.Trainer;
    public JobData Files => files;
    public FineTuningJob Job => job;
    public int? SweepMember => sweepMember;
    /// <summary>The validation loss at the last epoch's end (null without a validation file, or before one ended).</summary>
    public double? LastValidLoss { get; private set; }
    /// <summary>The training loss of the last step.</summary>
    public double? LastTrainLoss { get; private set; }

    /// <summary>Makes the job's adapter and trainer over <paramref name="model"/> and starts or resumes its run.</summary>
    public AdapterTrainer Start(nn.Module model)
    {
        adapter = TrainableAdapter.Create(model, spec.Config, job.Seed);
        if (job.StartAdapterPath is { } start)
        {
            // Continuing from a fine-tuned model: its weights are where training starts (and, frozen, the starting model).
            if (!blobs.Exists(start)) throw new InvalidDataException($"The model {job.StartModel} the job continues from has been deleted");
            adapter.LoadWeights(blobs.Resolve(start));
        }
        run = JobObjectives.Of(job).CreateTrainer(new ObjectiveRun(job, model, adapter, spec.Config, files, spec.Hp, options.Speed, job.StartAdapterPath is not null)
        {
            Services = model is CausalLanguageModel ? files.Services() : null,   // text models: an objective may sample with the engine
        });
        Begin(run.Trainer);
        return run.Trainer;
    }

    /// <summary>On the group's thread, between its steps: the job's adapter and trainer over the group's copy of the base.</summary>
    public FusableTrainer Join(CausalLanguageModel model) =>
        Start(model) as FusableTrainer ?? throw new InvalidOperationException("a fused job trains a language model");

    public void AfterStep(TrainingProgress progress, int fusedWith)
    {
        if (fusedWith != this.fusedWith && progress.Step > 0)
            jobs.AddEvent(job.Id, prefix + (fusedWith > 0
                ? $"Training fused with {fusedWith} other job(s) on {job.Model} from step {progress.Step}: one copy of the base, this job's own adapter, optimizer and data"
                : $"Training alone from step {progress.Step}: the jobs it was fused with have left"));
        this.fusedWith = fusedWith;
        AfterStep(progress);
    }

    /// <summary>After each step: its progress (once per step), the checkpoint at an epoch's end or the state now and then, early stopping.</summary>
    public void AfterStep(TrainingProgress p)
    {
        var trainer = run!.Trainer;
        bool epochEnd = p.Step % trainer.StepsPerEpoch == 0;
        var valid = epochEnd && run.Evaluate is not null ? run.Evaluate() : ((double Loss, double Accuracy)?)null;
        LastTrainLoss = p.TrainLoss;
        if (valid is { } measured) LastValidLoss = measured.Loss;
        if (p.Step > reported) Report(p, valid);
        if (epochEnd) SaveCheckpoint(trainer, p, valid);
        else if (p.Step % options.StateEverySteps == 0) states.Save(job.Id, trainer);
        if (valid is { } v && stopping.ShouldStop(v.Loss))
        {
            jobs.AddEvent(job.Id, prefix + $"Early stopping at step {p.Step}: the validation loss has not improved for {job.EarlyStoppingPatience} epoch(s)");
            trainer.StopAfterThisStep();
        }
        StopUnlessRunning();
    }

    /// <summary>While the job waits for a slot or a group: its lease renewed, its status watched.</summary>
    public bool ShouldContinue()
    {
        StopUnlessRunning();
        return !stop.IsCancellationRequested;
    }

    /// <summary>Runs <paramref name="train"/>; when it stops early (pause, shutdown) the trainer's state is saved, unless the job was cancelled.</summary>
    public TrainingResult KeepingState(Func<TrainingResult> train)
    {
        try
        {
            return train();
        }
        catch (OperationCanceledException) when (!lease.Lost && Trainer is { } trainer)
        {
            // Keep the progress while the adapter is still alive: a resume, a re-queue after shutdown or a restart continues from it.
            if (jobs.StatusOf(job.Id) != JobStatus.Cancelled) states.Save(job.Id, trainer);
            throw;
        }
    }

    /// <summary>
    /// Saves the trained adapter as a blob and returns its row (registered when the job succeeds). With an eval's
    /// <c>keep_best</c>, the best checkpoint's weights are saved instead when that is not the last one.
    /// </summary>
    public Adapter SaveAdapter()
    {
        var adapterId = "adapter-" + Ids.New();
        var blobPath = BlobPaths.AdapterPath(adapterId);
        var best = scoring?.BestCheckpointFolder(Trainer?.Step ?? 0);
        blobs.WriteFolder(blobPath, temp =>
        {
            if (best is not null)
                foreach (var file in Directory.GetFiles(best)) File.Copy(file, Path.Combine(temp, Path.GetFileName(file)));
            else
            {
                adapter!.Save(temp);
                files.WriteTrainedWith(temp);
            }
        });
        return new Adapter
        {
            Id = adapterId, Name = fineTunedModel, BaseModel = job.Model, Method = job.AdapterType,
            Config = job.AdapterConfigOf(sweepMember), ParameterCount = adapter!.ParameterCount, SizeBytes = blobs.SizeOf(blobPath),
            BlobPath = blobPath, Sha256 = blobs.ContentHash(blobPath), JobId = job.Id, ProjectId = job.ProjectId, CreatedAt = JobLifecycle.Now(),
        };
    }

    /// <summary>Starts or resumes the run on <paramref name="trainer"/>: its event, its saved state, the early-stopping history.</summary>
    void Begin(AdapterTrainer trainer)
    {
        if (states.LoadNewest(job.Id, trainer, (step, why) => jobs.AddEvent(job.Id,
                $"The trainer state saved at step {step} is damaged ({why}); resuming from the one before it", level: "warn")))
        {
            jobs.AddEvent(job.Id, prefix + $"Fine-tuning job resumed from step {trainer.Step}", data: sweepMember is > 0 ? null : JobEventData.ForStatus(JobStatus.Running));
        }
        else
        {
            // A sweep's job started once: its first member says so with the status, the others only note their start.
            if (sweepMember is not > 0) ServiceTelemetry.JobQueueWait.Record(Math.Max(0, JobLifecycle.Now() - job.CreatedAt));
            jobs.AddEvent(job.Id, prefix + $"Fine-tuning job started: {adapter!.ParameterCount:N0} {spec.Config.Method} parameters, {run!.ExampleCount} examples, {trainer.TotalSteps} steps, learning rate {spec.Hp.LearningRate:G3}",
                data: sweepMember is > 0 ? null : JobEventData.ForStatus(JobStatus.Running));
        }

        reported = jobs.LastReportedStep(job.Id);   // steps redone after a crash were reported the first time already
        // A resumed run remembers the validation losses of the epochs before it, so it stops where an uninterrupted one would.
        foreach (var metrics in jobs.CheckpointMetrics(job.Id, trainer.Step, sweepMember))
            if (JsonDocument.Parse(metrics).RootElement.TryGetProperty("valid_loss", out var loss) && loss.ValueKind == JsonValueKind.Number
                && stopping.ShouldStop(loss.GetDouble()))
                trainer.StopAfterThisStep();
        if (!lease.Renew()) throw new OperationCanceledException("another worker holds the job");   // loading may have taken a while
    }

    void Report(TrainingProgress p, (double Loss, double Accuracy)? valid)
    {
        var progress = new ProgressMessage(job.Id, p.Step, p.TotalSteps, p.Epoch, p.TrainLoss, p.TrainAccuracy, valid?.Loss, valid?.Accuracy,
            p.LearningRate, p.TokensPerSecond, p.EtaSeconds, adapter!.Statistics(), p.Metrics, processStats.Sample(), sweepMember);
        jobs.Progress(progress, prefix + $"Step {p.Step}/{p.TotalSteps}: training loss={p.TrainLoss:0.0000}"
                                + (valid is { } v ? $", validation loss={v.Loss:0.0000}, validation accuracy={v.Accuracy:0.0000}" : ""));
    }

    /// <summary>At each epoch's end: the trainer state to resume from, and the adapter as a checkpoint model.</summary>
    void SaveCheckpoint(AdapterTrainer trainer, TrainingProgress p, (double Loss, double Accuracy)? valid)
    {
        var state = states.Save(job.Id, trainer);
        if (jobs.HasCheckpoint(job.Id, p.Step, sweepMember)) return;   // saved before a crash already
        var blobPath = BlobPaths.CheckpointPath(job.Id, p.Step, sweepMember);
        if (!blobs.Exists(blobPath))   // a crash may have come between the folder and its row
        {
            // Over the project's checkpoint quota the run goes on (its trainer state is kept to resume from) without this checkpoint.
            long size = new DirectoryInfo(state).EnumerateFiles().Where(f => f.Name is AdapterConfig.FileName or TrainableAdapter.WeightsFileName).Sum(f => f.Length);
            if (StorageUsage.Exceeded("checkpoints", jobs.CheckpointBytesOfProject(job.ProjectId, blobs), size, quotas.MaxCheckpointBytes) is { } over)
            {
                jobs.AddEvent(job.Id, $"No checkpoint at step {p.Step}: {over}", level: "warn");
                return;
            }
            try
            {
                blobs.WriteFolder(blobPath, temp =>
                {
                    foreach (var name in new[] { AdapterConfig.FileName, TrainableAdapter.WeightsFileName })
                        File.Copy(Path.Combine(state, name), Path.Combine(temp, name));
                    files.WriteTrainedWith(temp);
                });
            }
            catch (StorageFullException)
            {
                // The state of this step is dropped with it: the resumed run comes through this epoch's end again and
                // makes its checkpoint then, instead of going on from the state without it.
                states.Delete(job.Id, p.Step);
                throw;
            }
        }
        jobs.AddCheckpoint(new Checkpoint
        {
            Id = "ftckpt-" + Ids.New(), JobId = job.Id, Name = ModelNames.Checkpoint(fineTunedModel, p.Step, sweepMember), BaseModel = job.Model,
            StepNumber = p.Step, CreatedAt = JobLifecycle.Now(), BlobPath = blobPath, SweepMember = sweepMember,
            Metrics = JsonSerializer.Serialize(new
            {
                step = p.Step, train_loss = p.TrainLoss, train_mean_token_accuracy = p.TrainAccuracy,
                valid_loss = valid?.Loss, valid_mean_token_accuracy = valid?.Accuracy,
            }),
        });
        // The job's eval scores the checkpoint now, before training goes on (the fused group's other jobs wait for it).
        scoring?.Score(p.Step, stop.Token);
    }

    /// <summary>Stops the run once the job is no longer running here: cancelled, paused, or its lease lost.</summary>
    void StopUnlessRunning()
    {
        if (jobs.StatusOf(job.Id) != JobStatus.Running || !lease.Renew()) stop.Cancel();
    }

    public void Dispose()
    {
        adapter?.Dispose();
        run?.Trainer.Dispose();
    }
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
