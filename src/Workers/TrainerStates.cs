using AdapterService.Core.Storage;
using AdapterService.Core.Training;

namespace AdapterService.Workers;

/// <summary>
/// A job's saved trainer states in the blob store, one folder per step (<c>jobs/{id}/state/step-N</c>), the newest two
/// kept: what a paused, interrupted or crashed job resumes from. Each is written aside and committed whole.
/// </summary>
sealed class TrainerStates(IBlobStore blobs)
{
    const int Kept = 2;

    /// <summary>Saves the trainer's state at its step (unless saved already) and returns its local folder.</summary>
    public string Save(string jobId, AdapterTrainer trainer)
    {
        var path = $"{BlobPaths.TrainerStatePath(jobId)}/step-{trainer.Step}";
        if (!blobs.Exists(path))
        {
            var temp = blobs.NewTempFolder();
            trainer.SaveState(temp);
            blobs.CommitFolder(temp, path);
            foreach (var (_, old) in Saved(jobId).Skip(Kept)) blobs.Delete(old);
        }
        return blobs.Resolve(path);
    }

    /// <summary>The local folder of the newest saved state, if any.</summary>
    public string? Latest(string jobId) => Saved(jobId).Select(s => blobs.Resolve(s.Path)).FirstOrDefault();

    public void DeleteAll(string jobId) => blobs.Delete(BlobPaths.TrainerStatePath(jobId));

    /// <summary>The saved states, newest first.</summary>
    IEnumerable<(int Step, string Path)> Saved(string jobId)
    {
        var root = BlobPaths.TrainerStatePath(jobId);
        return blobs.List(root)
            .Select(name => (Ok: int.TryParse(name.Replace("step-", ""), out var step), Step: step, Path: $"{root}/{name}"))
            .Where(s => s.Ok).OrderByDescending(s => s.Step).Select(s => (s.Step, s.Path)).ToList();
    }
}
