using AdapterService.Core.Telemetry;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace AdapterService.Workers;

/// <summary>
/// OpenTelemetry for every host of the service (the API and the standalone worker): the service's own meter and
/// activity source (<see cref="ServiceTelemetry"/>) and the framework's meters, exported over OTLP when
/// <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> is set (the standard variable). The API adds its HTTP instrumentation and the
/// Prometheus endpoint on top of this one pipeline.
/// </summary>
public static class ServiceTelemetryWiring
{
    /// <summary>The .NET runtime's and EF Core's built-in meters, read by every host.</summary>
    static readonly string[] FrameworkMeters = ["System.Runtime", "Microsoft.EntityFrameworkCore", "System.Net.Http"];

    public static OpenTelemetryBuilder AddServiceTelemetry(this IServiceCollection services, IConfiguration configuration, string serviceName)
    {
        var telemetry = services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService(serviceName, serviceInstanceId: WorkerServices.WorkerId))
            .WithMetrics(m => m.AddMeter(ServiceTelemetry.Name).AddMeter(FrameworkMeters))
            .WithTracing(t => t.AddSource(ServiceTelemetry.Name));
        if (!string.IsNullOrWhiteSpace(configuration["OTEL_EXPORTER_OTLP_ENDPOINT"])) telemetry.UseOtlpExporter();
        return telemetry;
    }
}
