using System.Diagnostics;
using AdapterService.Core.Storage;
using AdapterService.Core.Telemetry;

namespace AdapterService.Core.Jobs;

/// <summary>
/// One trace per job: the request that creates it stamps its W3C trace context on the row, and each run of the job in
/// a worker (whichever process, however much later) is a span of that trace, ending with the run's outcome.
/// </summary>
public static class JobTracing
{
    /// <summary>Stamps the current trace context (the creating request's, when one is being recorded) on a new job.</summary>
    public static FineTuningJob Stamped(FineTuningJob job)
    {
        if (Activity.Current is { IdFormat: ActivityIdFormat.W3C } current) job.TraceParent ??= current.Id;
        return job;
    }

    /// <summary>A span for one run of <paramref name="job"/> in a worker, a child of the request that created it (null when nobody listens).</summary>
    public static Activity? StartRun(FineTuningJob job, string kind)
    {
        ActivityContext.TryParse(job.TraceParent, null, out var parent);
        var activity = ServiceTelemetry.Source.StartActivity($"{kind}.job.run", ActivityKind.Consumer, parent);
        activity?.SetTag("job.id", job.Id).SetTag("job.project", job.ProjectId).SetTag("job.model", job.Model);
        return activity;
    }

    /// <summary>Records how the run ended on its span: the job's status, as an event named for it (<c>fine_tuning.job.succeeded</c>…).</summary>
    public static void Ended(Activity? run, string kind, string status, string? error = null)
    {
        if (run is null) return;
        run.SetTag("job.status", status);
        run.AddEvent(new ActivityEvent($"{kind}.job.{status}"));
        if (error is not null) run.SetStatus(ActivityStatusCode.Error, error);
    }
}
