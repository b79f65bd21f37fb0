using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterService.Api.Tests;

/// <summary><c>Retention:*</c> removes old checkpoints, trainer states and folders of jobs that are gone, never what an unfinished job still uses.</summary>
[Collection(ServiceCollection.Name)]
public sealed class RetentionTests(ServiceFactory factory)
{
    const string Project = "proj_retention_test";   // rows of their own, out of the other tests' way
    const long Day = 86_400;

    [Fact]
    public void OldCheckpointsAndStatesGoButNotWhatAContinuedJobStartsFrom()
    {
        _ = factory.CreateClient();
        var blobs = factory.Services.GetRequiredService<IBlobStore>();
        long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        string old = "ftjob-ret-old-" + Ids.New(), recent = "ftjob-ret-new-" + Ids.New(), continued = "ftjob-ret-cont-" + Ids.New(), gone = "ftjob-ret-gone-" + Ids.New();

        void Folder(string blobPath)
        {
            var temp = blobs.NewTempFolder();
            File.WriteAllText(Path.Combine(temp, "adapter_model.safetensors"), "weights");
            blobs.CommitFolder(temp, blobPath);
        }
        FineTuningJob Job(string id, string status, long? finishedAt, string? start = null) => new()
        {
            Id = id, ProjectId = Project, Model = "tiny-llama-demo", TrainingFile = "file-x", AdapterType = "lora", AdapterConfig = "{}",
            Status = status, CreatedAt = now - 20 * Day, FinishedAt = finishedAt, StartAdapterPath = start,
        };
        Checkpoint Checkpoint(string jobId, int step) => new()
        {
            Id = "ftckpt-" + Ids.New(), JobId = jobId, Name = $"ft:tiny-llama-demo::{jobId}:ckpt-step-{step}", BaseModel = "tiny-llama-demo",
            StepNumber = step, CreatedAt = now - 15 * Day, Metrics = "{}", BlobPath = BlobPaths.CheckpointPath(jobId, step),
        };
        foreach (var (job, step) in new[] { (old, 1), (old, 2), (recent, 1) }) Folder(BlobPaths.CheckpointPath(job, step));
        Folder(BlobPaths.TrainerStatePath(old) + "/step-2");
        Folder(BlobPaths.TrainerStatePath(continued) + "/step-1");
        Folder($"jobs/{gone}/state/step-1");
        factory.Query(db =>
        {
            // A job finished 10 days ago, one finished yesterday, and a paused job that continues from the old one's first checkpoint.
            db.Jobs.AddRange(Job(old, JobStatus.Succeeded, now - 10 * Day), Job(recent, JobStatus.Succeeded, now - Day),
                Job(continued, JobStatus.Paused, null, start: BlobPaths.CheckpointPath(old, 1)));
            db.Checkpoints.AddRange(Checkpoint(old, 1), Checkpoint(old, 2), Checkpoint(recent, 1));
            return db.SaveChanges();
        });

        var options = new RetentionOptions { CheckpointDays = 7, TrainerStateDays = 7 };
        var swept = factory.Query(db => Retention.Sweep(db, blobs, options, now));
        Assert.Equal((1, 1), (swept.Checkpoints, swept.TrainerStates));
        Assert.True(swept.OrphanFolders >= 1);
        List<int> Steps(string jobId) => factory.Query(db => db.Checkpoints.Where(c => c.JobId == jobId).Select(c => c.StepNumber).OrderBy(s => s).ToList());
        Assert.Equal([1], Steps(old));   // step 2 went; step 1 is where the paused job starts from
        Assert.True(blobs.Exists(BlobPaths.CheckpointPath(old, 1)));
        Assert.False(blobs.Exists(BlobPaths.CheckpointPath(old, 2)));
        Assert.False(blobs.Exists(BlobPaths.TrainerStatePath(old)));
        Assert.Equal([1], Steps(recent));   // finished yesterday: kept
        Assert.True(blobs.Exists(BlobPaths.TrainerStatePath(continued)));   // an unfinished job's state stays
        Assert.False(blobs.Exists($"jobs/{gone}"));   // no row: nothing can reach it

        // Once the continued job is done, nothing holds the old checkpoint.
        factory.Query(db => db.Jobs.IgnoreQueryFilters().Where(j => j.Id == continued)
            .ExecuteUpdate(s => s.SetProperty(j => j.Status, JobStatus.Cancelled).SetProperty(j => j.FinishedAt, now)));
        Assert.Equal(1, factory.Query(db => Retention.Sweep(db, blobs, options, now)).Checkpoints);
        Assert.Empty(Steps(old));
        Assert.False(blobs.Exists(BlobPaths.CheckpointPath(old, 1)));
        // Off (the default): nothing is removed.
        Assert.Equal(new RetentionSweep(0, 0, 0), factory.Query(db => Retention.Sweep(db, blobs, new RetentionOptions(), now + 100 * Day)));
        Assert.Equal([1], Steps(recent));
    }
}
