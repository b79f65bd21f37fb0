using AdapterService.Core.Storage;

namespace AdapterService.Core.Jobs;

/// <summary>
/// What a job row asks a worker to do. Every kind is a row in <c>fine_tuning_jobs</c> with the same status, lease and
/// events; the kind picks the worker that runs it. Eval runs and sweeps would be kinds of their own.
/// </summary>
public enum JobKind
{
    FineTuning,
    Pretraining,
}

public static class JobKinds
{
    /// <summary>The <see cref="FineTuningJob.AdapterType"/> of pre-training jobs (they train a whole model, no adapter).</summary>
    public const string PretrainingType = "pretraining";

    public static JobKind Of(FineTuningJob job) => Of(job.AdapterType);

    public static JobKind Of(string adapterType) => adapterType == PretrainingType ? JobKind.Pretraining : JobKind.FineTuning;
}

/// <summary>
/// Hands job ids to the workers. Core and the API name a kind; the worker side (Hangfire) maps it to the runner, so
/// neither knows a runner type. The row in the database stays the truth: the queue only carries the id.
/// </summary>
public interface IJobQueue
{
    void Enqueue(JobKind kind, string jobId);

    /// <summary>Looks at the job again after <paramref name="delay"/> (a lease held by another worker may run out).</summary>
    void Schedule(JobKind kind, string jobId, TimeSpan delay);
}
