using AdapterService.Core.Storage;
using AdapterService.Core.Training;

namespace AdapterService.Workers;

/// <summary>
/// A job's saved trainer states in the blob store, one folder per step (<c>jobs/{id}/state/step-N</c>), the newest two
/// kept: what a paused, interrupted or crashed job resumes from. Each is written aside and committed whole. A sweep
/// member's are its own (<c>jobs/{id}/state-mK</c>).
/// </summary>
sealed class TrainerStates(IBlobStore blobs, int? sweepMember = null)
{
    const int Kept = 2;

    /// <summary>Saves the trainer's state at its step (unless saved already) and returns its local folder.</summary>
    public string Save(string jobId, AdapterTrainer trainer)
    {
        var path = $"{BlobPaths.TrainerStatePath(jobId, sweepMember)}/step-{trainer.Step}";
        if (!blobs.Exists(path))
        {
            blobs.WriteFolder(path, trainer.SaveState);   // on a full disk: nothing of it stays, the saves before it do
            foreach (var (_, old) in Saved(jobId).Skip(Kept)) blobs.Delete(old);
        }
        return blobs.Resolve(path);
    }

    /// <summary>
    /// Loads the newest saved state that loads: one that does not (damaged by a disk that lost it or a write that never
    /// reached it) is reported through <paramref name="damaged"/>, deleted, and the one before it tried. False when
    /// there was none; throws when every one was damaged (the trainer may hold part of one, so it cannot start afresh).
    /// </summary>
    public bool LoadNewest(string jobId, AdapterTrainer trainer, Action<int, string> damaged)
    {
        var saved = Saved(jobId);
        foreach (var (step, path) in saved)
        {
            try
            {
                trainer.LoadState(blobs.Resolve(path));
                return true;
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                damaged(step, e.GetType().Name);   // the type, not the message: messages of file errors carry server paths
                blobs.Delete(path);
            }
        }
        if (saved.Count > 0) throw new InvalidDataException($"every saved trainer state of job {jobId} is damaged; the job cannot resume");
        return false;
    }

    /// <summary>The step of the newest saved state (null: none), what a resumed run continues from.</summary>
    public int? NewestStep(string jobId) => Saved(jobId) is [var (step, _), ..] ? step : null;

    /// <summary>Deletes the state saved at <paramref name="step"/>, so a resumed run comes through that step again.</summary>
    public void Delete(string jobId, int step) => blobs.Delete($"{BlobPaths.TrainerStatePath(jobId, sweepMember)}/step-{step}");

    public void DeleteAll(string jobId) => blobs.Delete(BlobPaths.TrainerStatePath(jobId, sweepMember));

    /// <summary>The saved states, newest first.</summary>
    List<(int Step, string Path)> Saved(string jobId)
    {
        var root = BlobPaths.TrainerStatePath(jobId, sweepMember);
        return blobs.List(root)
            .Select(name => (Ok: int.TryParse(name.Replace("step-", ""), out var step), Step: step, Path: $"{root}/{name}"))
            .Where(s => s.Ok).OrderByDescending(s => s.Step).Select(s => (s.Step, s.Path)).ToList();
    }
}
