using AdapterService.Core.Jobs;
using AdapterService.Workers;
using OpenTelemetry.Metrics;
using OpenTelemetry.Trace;

namespace AdapterService.Api.Infrastructure;

/// <summary>
/// The API host's OpenTelemetry, wired once: the pipeline every host shares (<see cref="WorkerServices.AddServiceTelemetry"/>) plus
/// ASP.NET Core's meters (hosting, Kestrel, SignalR connections, routing, rate limiting), a span per HTTP request, and
/// the Prometheus exporter that serves <c>/metrics</c> from the instruments (no database query per scrape).
/// </summary>
public static class Telemetry
{
    static readonly string[] AspNetCoreMeters =
    [
        "Microsoft.AspNetCore.Hosting", "Microsoft.AspNetCore.Server.Kestrel", "Microsoft.AspNetCore.Http.Connections",
        "Microsoft.AspNetCore.Routing", "Microsoft.AspNetCore.Diagnostics", "Microsoft.AspNetCore.RateLimiting",
        "Microsoft.AspNetCore.Authentication", "Microsoft.AspNetCore.Authorization",
    ];

    public static void AddTelemetry(this WebApplicationBuilder builder) =>
        builder.Services.AddServiceTelemetry(builder.Configuration, "adapter-service")
            .WithMetrics(m => m.AddMeter(AspNetCoreMeters).AddPrometheusExporter())
            .WithTracing(t => t.AddSource("Microsoft.AspNetCore.SignalR.Server")
                .AddAspNetCoreInstrumentation(o => o.Filter = context => !context.Request.Path.StartsWithSegments("/metrics")));

    /// <summary>
    /// Seeds the job gauge with the jobs by status now, where <c>Telemetry:SeedJobGauge</c> says so: by default in the
    /// all-in-one process (the only one that moves jobs, so its gauge is exact). In scale-out every process adds the
    /// transitions it makes; set the setting on exactly one API process, and the sum over the processes is exact.
    /// </summary>
    public static void SeedJobGauge(WebApplication app, JobLifecycle jobs)
    {
        WorkerServices.StartTelemetry(app.Services);
        if (app.Configuration.GetValue("Telemetry:SeedJobGauge", app.Configuration["Service:Role"] is null or "all")) jobs.CountJobsForTelemetry();
    }
}
