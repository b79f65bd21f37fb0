using AdapterService.Core.Storage;
using AdapterService.Core.Telemetry;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Core.Jobs;

/// <summary>
/// The one writer of a job's record: its creation, every status change (checked against the statuses it may leave, and
/// written together with its event in one transaction), its lease, progress, checkpoints and outcome. The API's handlers
/// and the workers' runners all go through it, so the rules of the lifecycle live here only.
/// </summary>
/// <remarks>
/// Every change reads the status it leaves and updates only from that status (retrying if another process moved the job
/// meanwhile), so the job gauge (<see cref="ServiceTelemetry.Jobs"/>) is kept exactly from the transitions, never by
/// counting rows.
/// One status change writes no event of its own: a worker's claim (queued → running) is announced by the run's first
/// event ("started" or "resumed", with the running status), which can only be written once the run knows what it
/// trains; until then a browser keeps seeing the job as queued, which is what it is waiting for.
/// </remarks>
public sealed class JobLifecycle(ServiceDbContext db, IJobQueue queue, IBlobStore? blobs = null)
{
    public static long Now() => DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    public FineTuningJob? Find(string jobId) => db.Jobs.AsNoTracking().SingleOrDefault(j => j.Id == jobId);

    public string StatusOf(string jobId) => db.Jobs.Where(j => j.Id == jobId).Select(j => j.Status).Single();

    /// <summary>
    /// Stores a new job, queued, with its metadata, the <paramref name="notes"/> as plain events and
    /// <paramref name="queuedMessage"/> as its status event, then hands it to the queue of its kind.
    /// </summary>
    public async Task CreateAsync(FineTuningJob job, IEnumerable<JobMetadata> metadata, IEnumerable<string> notes, string queuedMessage, CancellationToken cancel)
    {
        job.Status = JobStatus.Queued;
        db.Jobs.Add(JobTracing.Stamped(job));
        db.JobMetadata.AddRange(metadata);
        db.JobEvents.AddRange(notes.Select(message => new JobEvent { JobId = job.Id, CreatedAt = job.CreatedAt, Message = message }));
        db.JobEvents.Add(new JobEvent { JobId = job.Id, CreatedAt = job.CreatedAt, Message = queuedMessage, Data = JobEventData.ForStatus(JobStatus.Queued) });
        await db.SaveChangesAsync(cancel);
        ServiceTelemetry.JobMoved(null, JobStatus.Queued);
        queue.Enqueue(JobKinds.Of(job), job.Id);
    }

    /// <summary>
    /// Moves the job from the status it has, if <paramref name="may"/> allows that one, with <paramref name="update"/>
    /// (which sets the new status and may narrow the rows further); returns the status it left, or null when it did not
    /// move. The update is made only from the status read; when another process changed that status in between, again.
    /// </summary>
    async Task<string?> MoveAsync(string jobId, Func<string, bool> may,
        Func<IQueryable<FineTuningJob>, CancellationToken, Task<int>> update, CancellationToken cancel)
    {
        var before = await db.Jobs.Where(j => j.Id == jobId).Select(j => j.Status).SingleOrDefaultAsync(cancel);
        while (before is not null && may(before))
        {
            if (await update(db.Jobs.Where(j => j.Id == jobId && j.Status == before), cancel) > 0) return before;
            var now = await db.Jobs.Where(j => j.Id == jobId).Select(j => j.Status).SingleOrDefaultAsync(cancel);
            if (now == before) return null;   // the update's own condition (a live lease) held it back
            before = now;
        }
        return null;
    }

    /// <summary>
    /// Moves a job from one of <paramref name="from"/> to <paramref name="to"/> (stamping <c>finished_at</c> when
    /// <paramref name="to"/> is final) and writes <paramref name="message"/> as its status event, in one transaction.
    /// Returns whether it moved and the job as it is now (null: no such job, in the caller's project).
    /// </summary>
    public async Task<(bool Changed, FineTuningJob? Job)> TransitionAsync(string jobId, IReadOnlyCollection<string> from, string to, string message,
        CancellationToken cancel)
    {
        long now = Now();
        long? finishedAt = JobStatus.IsFinished(to) ? now : null;
        bool backToWork = to is JobStatus.Queued or JobStatus.Running;   // the error a job paused with (a full disk) is over
        await using var transaction = await db.Database.BeginTransactionAsync(cancel);
        var left = await MoveAsync(jobId, from.Contains, (jobs, c) =>
            jobs.ExecuteUpdateAsync(s => s.SetProperty(j => j.Status, to).SetProperty(j => j.FinishedAt, j => finishedAt ?? j.FinishedAt)
                .SetProperty(j => j.ErrorCode, j => backToWork ? null : j.ErrorCode).SetProperty(j => j.ErrorMessage, j => backToWork ? null : j.ErrorMessage), c), cancel);
        var job = await db.Jobs.AsNoTracking().SingleOrDefaultAsync(j => j.Id == jobId, cancel);
        if (left is null) return (false, job);
        if (JobStatus.IsFinished(to)) Finished(jobId, job!.ProjectId, to);
        db.JobEvents.Add(new JobEvent { JobId = jobId, CreatedAt = now, Message = message, Data = JobEventData.ForStatus(to) });
        await db.SaveChangesAsync(cancel);
        await transaction.CommitAsync(cancel);
        db.ChangeTracker.Clear();
        ServiceTelemetry.JobMoved(left, to);
        return (true, job);
    }

    /// <summary>Moves a paused job back to <c>queued</c> with its event and hands it to the queue of its kind.</summary>
    public async Task<(bool Changed, FineTuningJob? Job)> ResumeAsync(string jobId, string message, CancellationToken cancel)
    {
        var result = await TransitionAsync(jobId, [JobStatus.Paused], JobStatus.Queued, message, cancel);
        if (result.Changed) queue.Enqueue(JobKinds.Of(result.Job!), jobId);
        return result;
    }

    /// <summary>Adds this process's share of the job gauge: the jobs by status now (once, at the start of the API process).</summary>
    public void CountJobsForTelemetry()
    {
        foreach (var group in db.Jobs.GroupBy(j => j.Status).Select(g => new { Status = g.Key, Count = g.Count() }).ToList())
            ServiceTelemetry.Jobs.Add(group.Count, new KeyValuePair<string, object?>("status", group.Status));
    }

    /// <summary>The same as <see cref="TransitionAsync"/>, for a worker's thread.</summary>
    public bool Transition(string jobId, IReadOnlyCollection<string> from, string to, string message) =>
        TransitionAsync(jobId, from, to, message, CancellationToken.None).GetAwaiter().GetResult().Changed;

    /// <summary>
    /// At the start of a process whose queue did not survive (in-memory Hangfire): every queued or running job goes
    /// back to the queue. A running one was interrupted (its process died), so it is queued again, with its event.
    /// </summary>
    public void RequeueUnfinished()
    {
        var unfinished = db.Jobs.Where(j => j.Status == JobStatus.Queued || j.Status == JobStatus.Running)
            .Select(j => new { j.Id, j.Status, j.AdapterType }).ToList();
        foreach (var job in unfinished)
        {
            if (job.Status == JobStatus.Running)
                Transition(job.Id, [JobStatus.Running], JobStatus.Queued, "Job re-queued: the process that ran it stopped; it continues from its last saved state");
            queue.Enqueue(JobKinds.Of(job.AdapterType), job.Id);
        }
    }

    /// <summary>
    /// Takes the job for <paramref name="owner"/> if it is queued, or running under a lease that ran out (its worker
    /// died): null when it is not free (another worker holds it, or it is paused or finished).
    /// </summary>
    public JobLease? Claim(string jobId, string owner, int leaseSeconds)
    {
        long now = Now(), until = now + leaseSeconds;
        var left = MoveAsync(jobId, status => status is JobStatus.Queued or JobStatus.Running, (jobs, c) => jobs
                .Where(j => j.Status == JobStatus.Queued || j.LeaseUntil == null || j.LeaseUntil < now)
                .ExecuteUpdateAsync(s => s.SetProperty(j => j.Status, JobStatus.Running).SetProperty(j => j.LeaseOwner, owner).SetProperty(j => j.LeaseUntil, until), c),
            CancellationToken.None).GetAwaiter().GetResult();
        if (left is null) return null;
        ServiceTelemetry.JobMoved(left, JobStatus.Running);
        return new JobLease(this, jobId, owner, leaseSeconds, now);
    }

    internal bool ExtendLease(string jobId, string owner, long until) =>
        db.Jobs.Where(j => j.Id == jobId && j.LeaseOwner == owner).ExecuteUpdate(s => s.SetProperty(j => j.LeaseUntil, until)) > 0;

    /// <summary>Ends the lease now; the owner stays as the record of the worker that last ran the job.</summary>
    internal void ReleaseLease(string jobId, string owner) =>
        db.Jobs.Where(j => j.Id == jobId && j.LeaseOwner == owner).ExecuteUpdate(s => s.SetProperty(j => j.LeaseUntil, (long?)null));

    /// <summary>Adds an event that changes no status (a note, a warning) and saves it at once: the relay reads the table.</summary>
    public void AddEvent(string jobId, string message, string type = "message", string? data = null, string level = "info", int? step = null)
    {
        db.JobEvents.Add(new JobEvent { JobId = jobId, CreatedAt = Now(), Message = message, Type = type, Data = data, Level = level, Step = step });
        db.SaveChanges();
        db.ChangeTracker.Clear();
    }

    /// <summary>A step's progress: its metrics event (the relay pushes it as <c>progress</c>) and the job's estimated finish.</summary>
    public void Progress(ProgressMessage progress, string message)
    {
        using var transaction = db.Database.BeginTransaction();
        AddEvent(progress.JobId, message, "metrics", JobEventData.ForMetrics(progress), step: progress.Step);
        long finish = Now() + (long)Math.Ceiling(progress.EtaSeconds);
        db.Jobs.Where(j => j.Id == progress.JobId).ExecuteUpdate(s => s.SetProperty(j => j.EstimatedFinish, finish));
        transaction.Commit();
    }

    /// <summary>The last step a metrics event reports: steps redone after a crash were reported already.</summary>
    public int LastReportedStep(string jobId) =>
        db.JobEvents.Where(e => e.JobId == jobId && e.Type == "metrics").Select(e => (int?)e.Step).Max() ?? 0;

    /// <summary>
    /// What <see cref="FairTurns"/> decides on for a queued fine-tuning job: the running fine-tuning jobs per project,
    /// and the projects with a queued fine-tuning job other than <paramref name="jobId"/>.
    /// </summary>
    public (Dictionary<string, int> Running, List<string> Waiting) Turns(string jobId)
    {
        var fineTuning = db.Jobs.IgnoreQueryFilters().Where(j => j.AdapterType != JobKinds.PretrainingType);
        var running = fineTuning.Where(j => j.Status == JobStatus.Running).GroupBy(j => j.ProjectId)
            .Select(g => new { g.Key, Count = g.Count() }).ToDictionary(g => g.Key, g => g.Count);
        var waiting = fineTuning.Where(j => j.Status == JobStatus.Queued && j.Id != jobId).Select(j => j.ProjectId).Distinct().ToList();
        return (running, waiting);
    }

    /// <summary>The bytes of the checkpoints of <paramref name="projectId"/>'s jobs, against its checkpoint quota.</summary>
    public long CheckpointBytesOfProject(string projectId, IBlobStore blobs)
    {
        var jobIds = db.Jobs.IgnoreQueryFilters().Where(j => j.ProjectId == projectId).Select(j => j.Id);
        return StorageUsage.FolderBytes(blobs, db.Checkpoints.Where(c => jobIds.Contains(c.JobId)).Select(c => c.BlobPath).ToList());
    }

    public bool HasCheckpoint(string jobId, int step, int? sweepMember = null) =>
        db.Checkpoints.Any(c => c.JobId == jobId && c.StepNumber == step && c.SweepMember == sweepMember);

    /// <summary>The metrics JSON of the job's checkpoints up to <paramref name="step"/>, oldest first.</summary>
    public List<string> CheckpointMetrics(string jobId, int step, int? sweepMember = null) =>
        db.Checkpoints.Where(c => c.JobId == jobId && c.StepNumber <= step && c.SweepMember == sweepMember).OrderBy(c => c.StepNumber).Select(c => c.Metrics).ToList();

    /// <summary>Registers a checkpoint (its folder is in the blob store already) and announces it.</summary>
    public void AddCheckpoint(Checkpoint checkpoint)
    {
        db.Checkpoints.Add(checkpoint);
        db.SaveChanges();
        db.ChangeTracker.Clear();
        AddEvent(checkpoint.JobId, $"Checkpoint created at step {checkpoint.StepNumber}: {checkpoint.Name}");
    }

    /// <summary>
    /// Marks the job succeeded and registers what it made (a fine-tuning job's adapter, a pre-training job's base model
    /// unless it exists) in one transaction, only if it is still running under <paramref name="lease"/>: whoever sees the
    /// job succeeded also sees its model and its last events. False (and nothing written) when it was cancelled, paused or
    /// taken over meanwhile. A sweep's job records its <paramref name="sweep"/> with the best member with it.
    /// </summary>
    public bool Succeed(JobLease lease, string fineTunedModel, long trainedTokens, Adapter? adapter = null, BaseModel? baseModel = null, Sweep? sweep = null)
    {
        using var transaction = db.Database.BeginTransaction();
        long now = Now();
        int updated = db.Jobs.Where(j => j.Id == lease.JobId && j.Status == JobStatus.Running && j.LeaseOwner == lease.Owner).ExecuteUpdate(s => s
            .SetProperty(j => j.Status, JobStatus.Succeeded)
            .SetProperty(j => j.FineTunedModel, fineTunedModel)
            .SetProperty(j => j.TrainedTokens, trainedTokens)
            .SetProperty(j => j.FinishedAt, now));
        if (updated == 0) return false;
        if (sweep is not null)
        {
            string json = sweep.ToJson();
            db.Jobs.Where(j => j.Id == lease.JobId).ExecuteUpdate(s => s.SetProperty(j => j.Sweep, json));
        }
        Finished(lease.JobId, db.Jobs.Where(j => j.Id == lease.JobId).Select(j => j.ProjectId).Single(), JobStatus.Succeeded);
        if (adapter is not null)
        {
            db.Adapters.Add(adapter);
            db.JobEvents.Add(new JobEvent { JobId = lease.JobId, CreatedAt = now, Message = $"New fine-tuned model created: {adapter.Name}" });
        }
        if (baseModel is not null && !db.BaseModels.Any(m => m.Id == baseModel.Id))
        {
            db.BaseModels.Add(baseModel);
            db.JobEvents.Add(new JobEvent { JobId = lease.JobId, CreatedAt = now, Message = $"Base model registered: {baseModel.Id}" });
        }
        db.SaveChanges();
        db.JobEvents.Add(new JobEvent { JobId = lease.JobId, CreatedAt = now, Message = "The job has successfully completed", Data = JobEventData.ForStatus(JobStatus.Succeeded, fineTunedModel) });
        db.SaveChanges();
        transaction.Commit();
        db.ChangeTracker.Clear();
        ServiceTelemetry.JobMoved(JobStatus.Running, JobStatus.Succeeded);
        return true;
    }

    /// <summary>
    /// What a job's final status brings, saved with the status change: its step metrics as its result file
    /// (<see cref="JobResultFiles"/>) and its webhook event (the outbox rows the API's sender delivers).
    /// </summary>
    void Finished(string jobId, string projectId, string status)
    {
        if (blobs is not null) JobResultFiles.Add(db, blobs, jobId, projectId);
        WebhookEvents.Publish(db, projectId, WebhookEvents.ForJobStatus(status)!, jobId, Now());
    }

    /// <summary>
    /// A running job whose worker found the server's storage full: paused (it keeps its saved trainer states, and a
    /// resume continues from the newest) with <paramref name="message"/> as its error (code <c>storage_full</c>) and its
    /// error event, in one transaction; the error is cleared when it is resumed. False when it was no longer running.
    /// </summary>
    public bool PauseForFullStorage(string jobId, string message)
    {
        using var transaction = db.Database.BeginTransaction();
        var left = MoveAsync(jobId, status => status is JobStatus.Running or JobStatus.Queued, (jobs, c) => jobs.ExecuteUpdateAsync(s => s
            .SetProperty(j => j.Status, JobStatus.Paused)
            .SetProperty(j => j.ErrorCode, StorageFullException.Code)
            .SetProperty(j => j.ErrorMessage, message), c), CancellationToken.None).GetAwaiter().GetResult();
        if (left is null) return false;
        AddEvent(jobId, message, level: "error", data: JobEventData.ForStatus(JobStatus.Paused, error: message));
        transaction.Commit();
        ServiceTelemetry.JobMoved(left, JobStatus.Paused);
        return true;
    }

    /// <summary>
    /// Marks the job failed with <paramref name="message"/> and writes the error event, in one transaction, if its status
    /// is one of <paramref name="from"/>; a job that reached a final status meanwhile (cancelled, succeeded) keeps it.
    /// </summary>
    public void Fail(string jobId, string message, params string[] from)
    {
        using var transaction = db.Database.BeginTransaction();
        long now = Now();
        var left = MoveAsync(jobId, from.Contains, (jobs, c) => jobs.ExecuteUpdateAsync(s => s
            .SetProperty(j => j.Status, JobStatus.Failed)
            .SetProperty(j => j.ErrorCode, "training_failed")
            .SetProperty(j => j.ErrorMessage, message)
            .SetProperty(j => j.FinishedAt, now), c), CancellationToken.None).GetAwaiter().GetResult();
        if (left is null) return;
        Finished(jobId, db.Jobs.Where(j => j.Id == jobId).Select(j => j.ProjectId).Single(), JobStatus.Failed);
        AddEvent(jobId, message, level: "error", data: JobEventData.ForStatus(JobStatus.Failed, error: message));
        transaction.Commit();
        ServiceTelemetry.JobMoved(left, JobStatus.Failed);
    }
}

/// <summary>
/// A worker's hold on a job it trains: renewed as it trains, so a worker that died loses the job to the next one that
/// fetches it, and two workers never train the same job.
/// </summary>
public sealed class JobLease
{
    readonly JobLifecycle lifecycle;
    readonly int seconds;
    long renewedAt;

    internal JobLease(JobLifecycle lifecycle, string jobId, string owner, int seconds, long now) =>
        (this.lifecycle, JobId, Owner, this.seconds, renewedAt) = (lifecycle, jobId, owner, seconds, now);

    public string JobId { get; }
    public string Owner { get; }
    /// <summary>Another worker claimed the job (this one was too slow to renew).</summary>
    public bool Lost { get; private set; }

    /// <summary>Extends the lease (at most every third of its length); false once another worker holds the job.</summary>
    public bool Renew()
    {
        long now = JobLifecycle.Now();
        if (Lost || now - renewedAt < seconds / 3) return !Lost;
        renewedAt = now;
        Lost = !lifecycle.ExtendLease(JobId, Owner, now + seconds);
        return !Lost;
    }

    /// <summary>Lets another worker claim the job at once (its run here ended, whatever its status).</summary>
    public void Release()
    {
        if (!Lost) lifecycle.ReleaseLease(JobId, Owner);
    }
}
