using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using AdapterService.Core.Training;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Workers;

/// <summary>What a run leaves behind: its progress events, its checkpoints, the trainer state it resumes from, the trained adapter.</summary>
public sealed partial class FineTuningJobRunner
{
    /// <summary>Runs <paramref name="train"/>; when it stops early (pause, shutdown) the trainer's state is saved, unless the job was cancelled.</summary>
    TrainingResult KeepingState(string jobId, Func<AdapterTrainer?> trainer, Func<TrainingResult> train)
    {
        try
        {
            return train();
        }
        catch (OperationCanceledException) when (!leaseLost && trainer() is { } t)
        {
            // Keep the progress while the adapter is still alive (unless cancelled): a resume, a re-queue after
            // shutdown or a restart continues from this state.
            if (CurrentStatus(jobId) != JobStatus.Cancelled) SaveState(jobId, t);
            throw;
        }
    }

    /// <summary>Saves the trained adapter as a blob and returns its row (added to the database by <see cref="Succeed"/>).</summary>
    Adapter Register(FineTuningJob job, TrainableAdapter adapter)
    {
        var adapterId = "adapter-" + Ids.New();
        var temp = blobs.NewTempFolder();
        adapter.Save(temp);
        var blobPath = BlobPaths.AdapterPath(adapterId);
        blobs.CommitFolder(temp, blobPath);
        return new Adapter
        {
            Id = adapterId, Name = FineTunedModelName(job), BaseModel = job.Model, Method = job.AdapterType,
            Config = job.AdapterConfig, ParameterCount = adapter.ParameterCount, SizeBytes = blobs.SizeOf(blobPath),
            BlobPath = blobPath, Sha256 = blobs.ContentHash(blobPath), JobId = job.Id, ProjectId = job.ProjectId, CreatedAt = Now(),
        };
    }

    void Report(FineTuningJob job, TrainingProgress p, (double Loss, double Accuracy)? valid, object? adapterStatistics)
    {
        var message = new ProgressMessage(job.Id, p.Step, p.TotalSteps, p.Epoch, p.TrainLoss, p.LearningRate, p.TokensPerSecond, p.EtaSeconds, valid?.Loss);
        AddEvent(job.Id, $"Step {p.Step}/{p.TotalSteps}: training loss={p.TrainLoss:0.0000}"
                          + (valid is { } v ? $", validation loss={v.Loss:0.0000}, validation accuracy={v.Accuracy:0.0000}" : ""),
            "metrics", JobEventData.ForMetrics(message, p.TrainAccuracy, valid?.Accuracy, adapterStatistics), step: p.Step);
        long finish = Now() + (long)Math.Ceiling(p.EtaSeconds);
        db.Jobs.Where(j => j.Id == job.Id).ExecuteUpdate(s => s.SetProperty(j => j.EstimatedFinish, finish));
    }

    /// <summary>At each epoch's end: the trainer state to resume from, and the adapter as a checkpoint model.</summary>
    void SaveCheckpoint(FineTuningJob job, AdapterTrainer trainer, TrainingProgress p, (double Loss, double Accuracy)? valid)
    {
        var state = SaveState(job.Id, trainer);
        if (db.Checkpoints.Any(c => c.JobId == job.Id && c.StepNumber == p.Step)) return;   // saved before a crash already
        var blobPath = BlobPaths.CheckpointPath(job.Id, p.Step);
        if (!Directory.Exists(blobs.Resolve(blobPath)))   // a crash may have come between the folder and its row
        {
            var temp = blobs.NewTempFolder();
            foreach (var name in new[] { AdapterConfig.FileName, TrainableAdapter.WeightsFileName })
                File.Copy(Path.Combine(state, name), Path.Combine(temp, name));
            blobs.CommitFolder(temp, blobPath);
        }
        var modelName = $"{FineTunedModelName(job)}:ckpt-step-{p.Step}";
        db.Checkpoints.Add(new Checkpoint
        {
            Id = "ftckpt-" + Ids.New(), JobId = job.Id, Name = modelName, BaseModel = job.Model, StepNumber = p.Step, CreatedAt = Now(), BlobPath = blobPath,
            Metrics = JsonSerializer.Serialize(new
            {
                step = p.Step, train_loss = p.TrainLoss, train_mean_token_accuracy = p.TrainAccuracy,
                valid_loss = valid?.Loss, valid_mean_token_accuracy = valid?.Accuracy,
            }),
        });
        db.SaveChanges();
        db.ChangeTracker.Clear();
        AddEvent(job.Id, $"Checkpoint created at step {p.Step}: {modelName}");
    }

    /// <summary>Writes the trainer's state as <c>state/step-N</c> (atomically) and keeps only the newest two.</summary>
    string SaveState(string jobId, AdapterTrainer trainer)
    {
        var root = blobs.Resolve(BlobPaths.TrainerStatePath(jobId));
        var folder = Path.Combine(root, $"step-{trainer.Step}");
        if (Directory.Exists(folder)) return folder;
        var temp = blobs.NewTempFolder();
        trainer.SaveState(temp);
        Directory.CreateDirectory(root);
        Directory.Move(temp, folder);
        foreach (var old in StateFolders(root).Skip(2)) Directory.Delete(old.Path, recursive: true);
        return folder;
    }

    string? LatestState(string jobId)
    {
        var root = blobs.Resolve(BlobPaths.TrainerStatePath(jobId));
        return Directory.Exists(root) ? StateFolders(root).FirstOrDefault().Path : null;
    }

    static IEnumerable<(int Step, string Path)> StateFolders(string root) =>
        Directory.GetDirectories(root)
            .Select(d => (Ok: int.TryParse(Path.GetFileName(d).Replace("step-", ""), out var step), Step: step, Path: d))
            .Where(d => d.Ok).OrderByDescending(d => d.Step).Select(d => (d.Step, d.Path));
}
