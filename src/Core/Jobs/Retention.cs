using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Jobs;

/// <summary>
/// <c>Retention:*</c>: how long what a finished job leaves in the blob store is kept. 0 keeps it (the default: nothing
/// is removed unless asked).
/// </summary>
public sealed class RetentionOptions
{
    /// <summary>Days after its job finished that a checkpoint (its row, its model name and its folder) is removed.</summary>
    public int CheckpointDays { get; set; }
    /// <summary>Days after its job finished that the job's trainer states (kept to resume it) are removed; a finished job is never resumed.</summary>
    public int TrainerStateDays { get; set; }
    /// <summary>Minutes between sweeps.</summary>
    public int SweepMinutes { get; set; } = 60;
}

/// <summary>What one sweep removed.</summary>
public sealed record RetentionSweep(int Checkpoints, int TrainerStates, int OrphanFolders);

/// <summary>
/// Removes old checkpoints and trainer states of finished jobs, and job folders whose job is gone, but never what is
/// still referenced: a checkpoint an unfinished job continues from (its <c>StartAdapterPath</c>, read again when it
/// resumes after a crash), a checkpoint an unfinished eval run evaluates, and anything of a job not finished (paused included).
/// </summary>
public static class Retention
{
    public static RetentionSweep Sweep(ServiceDbContext db, IBlobStore blobs, RetentionOptions options, long now)
    {
        var jobs = db.Jobs.IgnoreQueryFilters();
        var referenced = jobs.Where(j => JobStatus.Unfinished.Contains(j.Status) && j.StartAdapterPath != null)
            .Select(j => j.StartAdapterPath!).ToHashSet();

        int checkpoints = 0;
        if (options.CheckpointDays > 0)
        {
            long cutoff = now - options.CheckpointDays * 86_400L;
            var finishedBefore = jobs.Where(j => j.FinishedAt != null && j.FinishedAt < cutoff && !JobStatus.Unfinished.Contains(j.Status)).Select(j => j.Id);
            // An eval run not finished yet answers with the checkpoint it names: it stays too.
            var evaluated = db.EvalRuns.IgnoreQueryFilters()
                .Where(r => r.Status == EvalRunStatus.Queued || r.Status == EvalRunStatus.InProgress).Select(r => r.Model).ToHashSet();
            var old = db.Checkpoints.Where(c => finishedBefore.Contains(c.JobId)).ToList()
                .Where(c => !referenced.Contains(c.BlobPath) && !evaluated.Contains(c.Name)).ToList();
            foreach (var checkpoint in old)
            {
                // The row first: its name stops resolving before its files go, so it never serves half-deleted weights.
                db.Checkpoints.Remove(checkpoint);
                db.SaveChanges();
                blobs.Delete(checkpoint.BlobPath);
                checkpoints++;
            }
        }

        int states = 0;
        if (options.TrainerStateDays > 0)
        {
            long cutoff = now - options.TrainerStateDays * 86_400L;
            foreach (var jobId in jobs.Where(j => j.FinishedAt != null && j.FinishedAt < cutoff && !JobStatus.Unfinished.Contains(j.Status)).Select(j => j.Id).ToList())
            {
                var state = BlobPaths.TrainerStatePath(jobId);
                if (!blobs.Exists(state) || referenced.Any(r => r.StartsWith(state + "/", StringComparison.Ordinal))) continue;
                blobs.Delete(state);
                states++;
            }
        }

        // Folders of jobs that have no row (a creation that failed after writing, a database restored from before them).
        int orphans = 0;
        if (options.CheckpointDays > 0 || options.TrainerStateDays > 0)
        {
            var folders = blobs.List("jobs");
            var known = jobs.Where(j => folders.Contains(j.Id)).Select(j => j.Id).ToHashSet();
            foreach (var folder in folders.Where(f => !known.Contains(f)))
            {
                var path = $"jobs/{folder}";
                if (referenced.Any(r => r.StartsWith(path + "/", StringComparison.Ordinal))) continue;
                blobs.Delete(path);
                orphans++;
            }
        }
        return new RetentionSweep(checkpoints, states, orphans);
    }
}
