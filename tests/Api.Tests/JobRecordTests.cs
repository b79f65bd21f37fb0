using System.Text.Json;
using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using AdapterService.Workers;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterService.Api.Tests;

/// <summary>The job's record as <see cref="JobLifecycle"/> keeps it: status changes with their events, leases, the stored progress.</summary>
[Collection(ServiceCollection.Name)]
public sealed class JobRecordTests(ServiceFactory factory)
{
    // Rows of a project of their own, so the other tests' job lists never see them.
    const string Project = "proj-job-record-tests";

    /// <summary>Queues nothing: these jobs are moved by hand.</summary>
    sealed class NoQueue : IJobQueue
    {
        public void Enqueue(JobKind kind, string jobId) { }
        public void Schedule(JobKind kind, string jobId, TimeSpan delay) { }
    }

    static FineTuningJob NewJob(string model, string type = "lora") => new()
    {
        Id = "ftjob-" + Ids.New(), ProjectId = Project, Model = model, TrainingFile = "file-none", Status = JobStatus.Queued,
        CreatedAt = JobLifecycle.Now(), AdapterType = type, AdapterConfig = "{}",
    };

    /// <summary>The status its newest status event announces (events of one second are ordered by id).</summary>
    static string? AnnouncedStatus(ServiceDbContext db, string jobId) =>
        db.JobEvents.Where(e => e.JobId == jobId && e.Data != null && e.Type == "message").OrderByDescending(e => e.Id).AsEnumerable()
            .Select(e => JobEventData.ToMessage(e)).OfType<StatusMessage>().FirstOrDefault()?.Status;

    [Fact]
    public async Task EveryStatusTransitionWritesItsEvent()
    {
        using var scope = factory.Services.CreateScope();
        var db = scope.ServiceProvider.GetRequiredService<ServiceDbContext>();
        var jobs = new JobLifecycle(db, new NoQueue());
        string Status(string id) => db.Jobs.AsNoTracking().Single(j => j.Id == id).Status;
        void AssertAnnounced(string id, string status)
        {
            Assert.Equal(status, Status(id));
            Assert.Equal(status, AnnouncedStatus(db, id));
        }

        var paused = NewJob("base");
        await jobs.CreateAsync(paused, [], ["Created"], "Queued", CancellationToken.None);
        AssertAnnounced(paused.Id, JobStatus.Queued);
        Assert.True((await jobs.TransitionAsync(paused.Id, [JobStatus.Queued, JobStatus.Running], JobStatus.Paused, "Paused", CancellationToken.None)).Changed);
        AssertAnnounced(paused.Id, JobStatus.Paused);
        Assert.False((await jobs.TransitionAsync(paused.Id, [JobStatus.Running], JobStatus.Queued, "Not from paused", CancellationToken.None)).Changed);
        AssertAnnounced(paused.Id, JobStatus.Paused);
        Assert.True(jobs.Transition(paused.Id, [JobStatus.Paused], JobStatus.Queued, "Resumed"));
        AssertAnnounced(paused.Id, JobStatus.Queued);
        // A claim is announced by the run's first event ("started"/"resumed"), once the run knows what it trains.
        var lease = jobs.Claim(paused.Id, "worker-a", 60)!;
        Assert.Equal(JobStatus.Running, Status(paused.Id));
        Assert.True(jobs.Transition(paused.Id, [JobStatus.Running], JobStatus.Queued, "Interrupted by shutdown"));
        AssertAnnounced(paused.Id, JobStatus.Queued);
        lease.Release();
        jobs.Claim(paused.Id, "worker-b", 60);
        jobs.Fail(paused.Id, "Training failed: test", JobStatus.Running);
        AssertAnnounced(paused.Id, JobStatus.Failed);
        jobs.Fail(paused.Id, "Failed twice", JobStatus.Running);   // a final status stays, and writes nothing
        Assert.Single(db.JobEvents.Where(e => e.JobId == paused.Id && e.Level == "error"));

        var succeeded = NewJob("base");
        await jobs.CreateAsync(succeeded, [], [], "Queued", CancellationToken.None);
        var held = jobs.Claim(succeeded.Id, "worker-a", 60)!;
        Assert.Null(jobs.Claim(succeeded.Id, "worker-b", 60));                                   // held, not taken
        Assert.True(jobs.Succeed(held, "ft:model", 10));
        AssertAnnounced(succeeded.Id, JobStatus.Succeeded);

        var cancelled = NewJob("base");
        await jobs.CreateAsync(cancelled, [], [], "Queued", CancellationToken.None);
        Assert.True((await jobs.TransitionAsync(cancelled.Id, JobStatus.Unfinished, JobStatus.Cancelled, "Cancelled", CancellationToken.None)).Changed);
        AssertAnnounced(cancelled.Id, JobStatus.Cancelled);
        Assert.NotNull(db.Jobs.AsNoTracking().Single(j => j.Id == cancelled.Id).FinishedAt);
    }

    [Fact]
    public void APretrainingJobWhoseWorkerDiedIsTakenOver()
    {
        using var scope = factory.Services.CreateScope();
        var db = scope.ServiceProvider.GetRequiredService<ServiceDbContext>();
        // A model that exists already: the job that takes over finishes at once, as a second pre-training of it does.
        var model = db.BaseModels.AsNoTracking().Select(m => m.Id).First();
        FineTuningJob Running(string owner, long leaseUntil)
        {
            var job = NewJob(model, JobKinds.PretrainingType);
            job.Status = JobStatus.Running;
            job.LeaseOwner = owner;
            job.LeaseUntil = leaseUntil;
            db.Jobs.Add(job);
            db.SaveChanges();
            db.ChangeTracker.Clear();
            return job;
        }
        var orphaned = Running("dead-worker", JobLifecycle.Now() - 5);
        var held = Running("live-worker", JobLifecycle.Now() + 600);

        scope.ServiceProvider.GetRequiredService<PretrainingJobRunner>().Run(orphaned.Id, CancellationToken.None);
        scope.ServiceProvider.GetRequiredService<PretrainingJobRunner>().Run(held.Id, CancellationToken.None);

        var taken = db.Jobs.AsNoTracking().Single(j => j.Id == orphaned.Id);
        Assert.Equal((JobStatus.Succeeded, model), (taken.Status, taken.FineTunedModel));
        Assert.Equal(JobStatus.Succeeded, AnnouncedStatus(db, orphaned.Id));
        var kept = db.Jobs.AsNoTracking().Single(j => j.Id == held.Id);
        Assert.Equal((JobStatus.Running, "live-worker"), (kept.Status, kept.LeaseOwner));   // its worker lives: left alone
        new JobLifecycle(db, new NoQueue()).Transition(held.Id, JobStatus.Unfinished, JobStatus.Cancelled, "Fine-tuning job cancelled");
    }

    [Fact]
    public void ProgressIsStoredInSnakeCaseWithoutTheJobIdAndReadBackAsTheSameRecord()
    {
        var progress = new ProgressMessage("ftjob-x", 3, 12, 1, 1.5, 0.25, null, null, 0.004, 100.5, 9, new { router = new[] { 0.5, 0.5 } });
        var stored = JobEventData.ForMetrics(progress);
        Assert.Equal("""{"step":3,"total_steps":12,"epoch":1,"train_loss":1.5,"train_mean_token_accuracy":0.25,"valid_loss":null,"valid_mean_token_accuracy":null,"learning_rate":0.004,"tokens_per_second":100.5,"eta_seconds":9,"adapter":{"router":[0.5,0.5]}}""",
            stored);
        var read = Assert.IsType<ProgressMessage>(JobEventData.ToMessage(new JobEvent { JobId = "ftjob-x", Message = "", Type = "metrics", Data = stored }));
        Assert.Equal(progress with { Adapter = null }, read with { Adapter = null });
        Assert.Equal("""{"router":[0.5,0.5]}""", JsonSerializer.Serialize(read.Adapter));
    }
}
