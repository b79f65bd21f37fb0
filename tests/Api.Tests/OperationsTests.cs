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

    [Fact]
    public async Task MetricsCountJobsAndGeneratedTokens()
    {
        await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-llama-demo", prompt = "x", max_tokens = 5, temperature = 0 });
        int SucceededJobs() => factory.Query(db => db.Jobs.Count(j => j.Status == "succeeded"));
        int before = SucceededJobs();   // jobs of other tests may finish meanwhile
        var response = await client.GetAsync("/metrics");
        int after = SucceededJobs();
        Assert.StartsWith("text/plain", response.Content.Headers.ContentType?.ToString());
        var lines = (await response.Content.ReadAsStringAsync()).Split('\n');
        double Value(string series) => double.Parse(lines.Single(l => l.StartsWith(series + " ", StringComparison.Ordinal)).Split(' ')[1],
            System.Globalization.CultureInfo.InvariantCulture);

        Assert.True(Value("adapter_service_inference_generated_tokens_total") >= 5);
        Assert.InRange(Value("adapter_service_jobs{status=\"succeeded\"}"), before, after);
        foreach (var name in new[] { "adapter_service_training_tokens_per_second", "adapter_service_inference_queue_length",
                     "adapter_service_adapter_cache_hits_total", "adapter_service_adapter_cache_bytes" })
            Assert.Contains($"# TYPE {name} ", string.Join('\n', lines));
    }
}
