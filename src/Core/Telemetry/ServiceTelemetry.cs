using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace AdapterService.Core.Telemetry;

/// <summary>
/// The service's own meter and activity source, and every instrument on them: one home, so a metric's name, unit and
/// meaning are written once. The hosts (API, standalone worker) export them with OpenTelemetry; the code that does the
/// work records into them. Counters and gauges are per process: with several workers, a dashboard sums the processes
/// (the job gauge is seeded from the database by the API process only, then kept by every process's transitions).
/// </summary>
public static class ServiceTelemetry
{
    /// <summary>The name of the meter and of the activity source.</summary>
    public const string Name = "AdapterService";

    public static readonly Meter Meter = new(Name);
    public static readonly ActivitySource Source = new(Name);

    /// <summary>Jobs by status: +1 to the status a job enters, −1 to the one it leaves (<c>Jobs.JobLifecycle</c> is the only writer).</summary>
    public static readonly UpDownCounter<long> Jobs = Meter.CreateUpDownCounter<long>("adapter_service.jobs", "{job}",
        "Fine-tuning and pre-training jobs by status (summed over processes).");

    public static readonly Counter<long> TrainingTokens = Meter.CreateCounter<long>("adapter_service.training.tokens", "{token}",
        "Tokens trained on (every optimizer step of every job).");

    public static readonly Counter<long> TrainingSteps = Meter.CreateCounter<long>("adapter_service.training.steps", "{step}",
        "Optimizer steps taken.");

    public static readonly Histogram<double> JobQueueWait = Meter.CreateHistogram<double>("adapter_service.job.queue_wait", "s",
        "Seconds from a job's creation to the start of its training.");

    public static readonly Histogram<double> TimeToFirstToken = Meter.CreateHistogram<double>("adapter_service.inference.time_to_first_token", "s",
        "Seconds from a generation request's arrival to its first token.");

    public static readonly Histogram<long> BatchRows = Meter.CreateHistogram<long>("adapter_service.inference.batch_rows", "{row}",
        "Rows (sequences) in each decode step of the engine.");

    /// <summary>A job entered <paramref name="to"/>, leaving <paramref name="from"/> (null: it is new).</summary>
    public static void JobMoved(string? from, string to)
    {
        if (from == to) return;
        if (from is not null) Jobs.Add(-1, new KeyValuePair<string, object?>("status", from));
        Jobs.Add(1, new KeyValuePair<string, object?>("status", to));
    }
}
