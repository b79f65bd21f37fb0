using AdapterService.Core.Jobs;
using Hangfire;
using Hangfire.States;

namespace AdapterService.Workers;

/// <summary>The job queue on Hangfire: each kind of job to the runner that trains it, all on the one training queue.</summary>
public sealed class HangfireJobQueue(IBackgroundJobClient hangfire) : IJobQueue
{
    public void Enqueue(JobKind kind, string jobId)
    {
        var queued = new EnqueuedState(WorkerServices.FineTuningQueue);
        switch (kind)
        {
            case JobKind.FineTuning: hangfire.Create<FineTuningJobRunner>(r => r.Run(jobId, CancellationToken.None), queued); break;
            case JobKind.Pretraining: hangfire.Create<PretrainingJobRunner>(r => r.Run(jobId, CancellationToken.None), queued); break;
            default: throw new ArgumentOutOfRangeException(nameof(kind), kind, "no runner for this kind of job");
        }
    }

    public void Schedule(JobKind kind, string jobId, TimeSpan delay)
    {
        switch (kind)
        {
            case JobKind.FineTuning: hangfire.Schedule<FineTuningJobRunner>(r => r.Run(jobId, CancellationToken.None), delay); break;
            case JobKind.Pretraining: hangfire.Schedule<PretrainingJobRunner>(r => r.Run(jobId, CancellationToken.None), delay); break;
            default: throw new ArgumentOutOfRangeException(nameof(kind), kind, "no runner for this kind of job");
        }
    }
}
