using System.Net.Http.Json;

namespace AdapterService.Api.Tests;

[Collection(ServiceCollection.Name)]
public sealed class OperationsTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    [Fact]
    public async Task LivenessAndReadinessReport()
    {
        Assert.Equal("ok", await client.GetStringAsync("/healthz"));
        var ready = await Api.JsonAsync(await client.GetAsync("/readyz"));
        Assert.Equal("ready", (string?)ready["status"]);
        foreach (var check in new[] { "database", "blob_store", "queue" })
            Assert.Equal("ok", (string?)ready["checks"]![check]);
    }

    /// <summary>
    /// /metrics is OpenTelemetry's Prometheus exporter over the service's instruments and the framework's meters. (The
    /// meter is per process and this one hosts several test services, so exact job counts are checked in ProcessTests;
    /// Kestrel's meter there too: the test server has no Kestrel.)
    /// </summary>
    [Fact]
    public async Task MetricsComeFromTheInstrumentsAndTheFrameworksMeters()
    {
        await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-llama-demo", prompt = "x", max_tokens = 5, temperature = 0 });
        var response = await client.GetAsync("/metrics");
        Assert.StartsWith("text/plain", response.Content.Headers.ContentType?.ToString());
        var text = await response.Content.ReadAsStringAsync();
        Assert.True(Metrics.Value(text, "adapter_service_inference_generated_tokens_total") >= 5);
        Assert.True(Metrics.Value(text, "adapter_service_inference_time_to_first_token_seconds_count") >= 1);
        foreach (var name in new[] { "adapter_service_inference_queued_requests", "adapter_service_inference_running_sequences",
                     "adapter_service_adapter_cache_hits_total", "adapter_service_adapter_cache_size_bytes", "adapter_service_inference_batch_rows",
                     "http_server_request_duration_seconds", "microsoft_entityframeworkcore_queries_total", "dotnet_gc_collections_total" })
            Assert.Contains($"# TYPE {name} ", text);
    }
}

/// <summary>Reads Prometheus text: the sum of a metric's samples whose labels include <c>labels</c> (such as <c>status="queued"</c>).</summary>
static class Metrics
{
    public static double Value(string text, string name, params string[] labels) => text.Split('\n')
        .Where(l => (l.StartsWith(name + " ", StringComparison.Ordinal) || l.StartsWith(name + "{", StringComparison.Ordinal)) && labels.All(l.Contains))
        .Sum(l => double.Parse(l[(l.LastIndexOf('}') is >= 0 and var end ? end + 1 : name.Length)..].Trim().Split(' ')[0],
            System.Globalization.CultureInfo.InvariantCulture));
}
