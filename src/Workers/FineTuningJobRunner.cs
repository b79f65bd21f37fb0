using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Formats;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Training;
using Hangfire;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging;

namespace AdapterService.Workers;

/// <summary>
/// The Hangfire job that trains one fine-tuning job. It takes the job id only and is safe to run twice:
/// a finished job is a no-op, a job left running by a stopped process trains again from the start.
/// </summary>
public sealed class FineTuningJobRunner(ServiceDbContext db, BlobStore blobs, IJobNotifier notifier, ILogger<FineTuningJobRunner> log)
{
    static readonly JsonSerializerOptions SnakeCase = new() { PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>Learning rate for a learning_rate_multiplier of 1.</summary>
    public const double BaseLearningRate = 4e-3;

    [AutomaticRetry(Attempts = 0)]
    public void Run(string jobId, CancellationToken shutdown)
    {
        var job = db.Jobs.AsNoTracking().SingleOrDefault(j => j.Id == jobId);
        if (job is null || JobStatus.IsFinished(job.Status)) return;
        if (!SetStatus(jobId, JobStatus.Running, [JobStatus.Queued, JobStatus.Running])) return;
        AddEvent(jobId, "Fine-tuning job started");
        Notify(new StatusMessage(jobId, JobStatus.Running, null, null));

        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(shutdown);
        try
        {
            var (adapter, result) = Train(job, cancel);
            Succeed(job, adapter, result);
        }
        catch (OperationCanceledException) when (shutdown.IsCancellationRequested)
        {
            log.LogInformation("Job {JobId} interrupted by shutdown; it runs again when re-queued", jobId);
            SetStatus(jobId, JobStatus.Queued, [JobStatus.Running]);
            throw;
        }
        catch (OperationCanceledException)
        {
            log.LogInformation("Job {JobId} stopped: it was cancelled", jobId);   // the cancel request logged and announced it
        }
        catch (Exception e)
        {
            log.LogError(e, "Job {JobId} failed", jobId);
            Fail(jobId, e is InvalidDataException or SafeTensorsException or ArgumentException or TrainingFileException ? e.Message : "Training failed: " + e.Message);
        }
    }

    (Adapter Adapter, TrainingResult Result) Train(FineTuningJob job, CancellationTokenSource cancel)
    {
        var baseModel = db.BaseModels.AsNoTracking().Single(m => m.Id == job.Model);
        var file = db.Files.AsNoTracking().Single(f => f.Id == job.TrainingFile);
        TrainingFile data;
        using (var stream = blobs.OpenRead(file.BlobPath)) data = TrainingFile.Parse(stream);
        var examples = TrainingData.Tokenize(data, new ByteTokenizer(), baseModel.ContextLength);
        var config = JsonSerializer.Deserialize<LoraConfig>(job.AdapterConfig)!;
        var hp = new Hyperparameters(job.Epochs, job.BatchSize, BaseLearningRate * job.LearningRateMultiplier);

        TorchSharp.torch.manual_seed(job.Seed);
        using var model = ModelFolder.Load(blobs.Resolve(baseModel.BlobPath));
        using var adapter = LoraAdapter.Create(model, config);
        AddEvent(job.Id, $"Training {adapter.ParameterCount:N0} LoRA parameters on {examples.Count} examples for {LoraTrainer.TotalSteps(examples.Count, hp)} steps");
        var result = LoraTrainer.Train(model, adapter, examples, hp, ByteTokenizer.End, job.Seed, p =>
        {
            var message = new ProgressMessage(job.Id, p.Step, p.TotalSteps, p.Epoch, p.TrainLoss, p.LearningRate, p.TokensPerSecond, p.EtaSeconds);
            AddEvent(job.Id, $"Step {p.Step}/{p.TotalSteps}: training loss={p.TrainLoss:0.0000}", "metrics", JsonSerializer.Serialize(message, SnakeCase));
            Notify(message);
            // Cancellation is a status change in the database, so it reaches a worker in any process within one step.
            if (db.Jobs.Where(j => j.Id == job.Id).Select(j => j.Status).Single() == JobStatus.Cancelled) cancel.Cancel();
        }, cancel.Token);

        var adapterId = "adapter-" + Ids.New();
        var temp = blobs.NewTempFolder();
        adapter.Save(temp);
        var blobPath = BlobStore.AdapterPath(adapterId);
        blobs.CommitFolder(temp, blobPath);
        var row = new Adapter
        {
            Id = adapterId, Name = FineTunedModelName(job), BaseModel = job.Model, Method = job.AdapterType,
            Config = job.AdapterConfig, ParameterCount = adapter.ParameterCount, SizeBytes = blobs.SizeOf(blobPath),
            BlobPath = blobPath, JobId = job.Id, CreatedAt = Now(),
        };
        return (row, result);
    }

    void Succeed(FineTuningJob job, Adapter adapter, TrainingResult result)
    {
        db.Adapters.Add(adapter);
        db.SaveChanges();
        var updated = db.Jobs.Where(j => j.Id == job.Id && j.Status == JobStatus.Running).ExecuteUpdate(s => s
            .SetProperty(j => j.Status, JobStatus.Succeeded)
            .SetProperty(j => j.FineTunedModel, adapter.Name)
            .SetProperty(j => j.TrainedTokens, result.TrainedTokens)
            .SetProperty(j => j.FinishedAt, Now()));
        if (updated == 0) return;   // cancelled at the very end: the adapter stays registered but the job keeps its status
        AddEvent(job.Id, $"New fine-tuned model created: {adapter.Name}");
        AddEvent(job.Id, "The job has successfully completed");
        Notify(new StatusMessage(job.Id, JobStatus.Succeeded, adapter.Name, null));
    }

    void Fail(string jobId, string message)
    {
        db.Jobs.Where(j => j.Id == jobId).ExecuteUpdate(s => s
            .SetProperty(j => j.Status, JobStatus.Failed)
            .SetProperty(j => j.ErrorCode, "training_failed")
            .SetProperty(j => j.ErrorMessage, message)
            .SetProperty(j => j.FinishedAt, Now()));
        AddEvent(jobId, message, level: "error");
        Notify(new StatusMessage(jobId, JobStatus.Failed, null, message));
    }

    public static string FineTunedModelName(FineTuningJob job) => $"ft:{job.Model}:{job.Suffix ?? ""}:{job.Id}";

    bool SetStatus(string jobId, string status, string[] from) =>
        db.Jobs.Where(j => j.Id == jobId && from.Contains(j.Status)).ExecuteUpdate(s => s.SetProperty(j => j.Status, status)) > 0;

    void AddEvent(string jobId, string message, string type = "message", string? data = null, string level = "info")
    {
        db.JobEvents.Add(new JobEvent { JobId = jobId, CreatedAt = Now(), Message = message, Type = type, Data = data, Level = level });
        db.SaveChanges();
        db.ChangeTracker.Clear();
    }

    // The worker thread trains synchronously; waiting here keeps the live messages in step order.
    void Notify(ProgressMessage m) => notifier.ProgressAsync(m).GetAwaiter().GetResult();
    void Notify(StatusMessage m) => notifier.StatusAsync(m).GetAwaiter().GetResult();

    static long Now() => DateTimeOffset.UtcNow.ToUnixTimeSeconds();
}
