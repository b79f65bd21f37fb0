using AdapterService.Core.Storage;
using Hangfire;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterService.Api.Apis;

public sealed record ReadinessDto(string Status, IReadOnlyDictionary<string, string> Checks);

/// <summary>Liveness, readiness and Prometheus metrics, for whoever runs the service.</summary>
public static class OperationsApi
{
    public static IEndpointRouteBuilder MapOperationsApi(this IEndpointRouteBuilder app)
    {
        var ops = app.MapGroup("").WithTags("Operations");
        ops.MapGet("/healthz", () => TypedResults.Text("ok")).WithName("getLiveness").WithSummary("Liveness: the process answers");
        ops.MapGet("/readyz", Ready).WithName("getReadiness").Produces<ReadinessDto>(503).WithSummary("Readiness: database, blob store and job queue work (503 otherwise)");
        // OpenTelemetry's Prometheus exporter: the service's instruments (ServiceTelemetry) and the framework's meters.
        ops.MapPrometheusScrapingEndpoint("/metrics").WithName("getMetrics").WithSummary("Prometheus metrics: jobs by status, training tokens, inference, adapter cache, ASP.NET Core, runtime, EF Core");
        return app;
    }

    static async Task<Results<Ok<ReadinessDto>, JsonHttpResult<ReadinessDto>>> Ready(ServiceDbContext db, IBlobStore blobs, JobStorage queue, CancellationToken cancel)
    {
        var checks = new Dictionary<string, string>
        {
            ["database"] = await Check(async () => { if (!await db.Database.CanConnectAsync(cancel)) throw new IOException("cannot connect"); }),
            ["blob_store"] = await Check(async () =>
            {
                var probe = $"tmp/ready-{Guid.NewGuid():N}";
                await blobs.WriteAsync(probe, new MemoryStream("ok"u8.ToArray()), cancel);
                blobs.Delete(probe);
            }),
            ["queue"] = await Check(() => { queue.GetMonitoringApi().Servers(); return Task.CompletedTask; }),
        };
        var body = new ReadinessDto(checks.Values.All(v => v == "ok") ? "ready" : "not_ready", checks);
        return body.Status == "ready" ? TypedResults.Ok(body) : TypedResults.Json(body, statusCode: StatusCodes.Status503ServiceUnavailable);
    }

    static async Task<string> Check(Func<Task> probe)
    {
        try { await probe(); return "ok"; }
        catch (Exception e) { return "failed: " + e.Message; }
    }
}
