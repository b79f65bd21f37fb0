using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Workers;

/// <summary>What every job runner (fine-tuning, pre-training) writes about its job: status changes, events, failure.</summary>
static class JobRecords
{
    public static long Now() => DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    /// <summary>Sets the job's status to <paramref name="to"/> if it is one of <paramref name="from"/>; whether it was.</summary>
    public static bool SetJobStatus(this ServiceDbContext db, string jobId, string to, params string[] from) =>
        db.Jobs.IgnoreQueryFilters().Where(j => j.Id == jobId && from.Contains(j.Status)).ExecuteUpdate(s => s.SetProperty(j => j.Status, to)) > 0;

    /// <summary>Adds one of the job's events and saves it at once: the events endpoint and the SignalR relay read the table.</summary>
    public static void AddJobEvent(this ServiceDbContext db, string jobId, string message, string type = "message", string? data = null,
        string level = "info", int? step = null)
    {
        db.JobEvents.Add(new JobEvent { JobId = jobId, CreatedAt = Now(), Message = message, Type = type, Data = data, Level = level, Step = step });
        db.SaveChanges();
        db.ChangeTracker.Clear();
    }

    /// <summary>
    /// Marks the job failed with <paramref name="message"/> and adds the error event, if its status is one of
    /// <paramref name="from"/>; a job that reached a final status meanwhile (cancelled, succeeded) keeps it.
    /// </summary>
    public static void FailJob(this ServiceDbContext db, string jobId, string message, params string[] from)
    {
        int updated = db.Jobs.IgnoreQueryFilters().Where(j => j.Id == jobId && from.Contains(j.Status)).ExecuteUpdate(s => s
            .SetProperty(j => j.Status, JobStatus.Failed)
            .SetProperty(j => j.ErrorCode, "training_failed")
            .SetProperty(j => j.ErrorMessage, message)
            .SetProperty(j => j.FinishedAt, Now()));
        if (updated > 0) db.AddJobEvent(jobId, message, level: "error", data: JobEventData.ForStatus(JobStatus.Failed, error: message));
    }
}
