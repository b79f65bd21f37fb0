using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary>The service as a user starts it: a real process on a loopback port, over its data folder.</summary>
public sealed class ProcessTests
{
    [Fact]
    public async Task AFreshProcessServesSwaggerAndTheBuiltInModel()
    {
        using var folder = new TempFolder("adapter-service-process-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        Assert.Contains($"{service.Http.BaseAddress!.ToString().TrimEnd('/')}/swagger", service.ReadyLine);
        Assert.Equal(HttpStatusCode.OK, (await service.Http.GetAsync("/swagger/index.html")).StatusCode);
        var models = JsonNode.Parse(await service.Http.GetStringAsync("/v1/models"))!;
        Assert.Contains(models["data"]!.AsArray(), m => (string?)m!["id"] == "tiny-llama-demo");
        Assert.True(File.Exists(Path.Combine(folder.FullName, "data", "service.db")));
        Assert.True(File.Exists(Path.Combine(folder.FullName, "data", "blobs", "models", "tiny-llama-demo", "config.json")));
    }

    [Fact]
    public async Task AJobKilledMidTrainingFinishesFromItsLastStateAfterARestart()
    {
        using var folder = new TempFolder("adapter-service-crash-");
        (string, string) stateEvery = ("Workers__StateEverySteps", "10");
        string jobId;
        int beforeKill;
        await using (var first = await ServiceProcess.StartAsync(folder.FullName, stateEvery))
        {
            var fileId = await Api.UploadFileAsync(first.Http, Enumerable.Repeat(Api.ChatLine("Where is the Eiffel Tower?", "In Paris."), 10));
            var job = await Api.CreateJobAsync(first.Http, new
            {
                model = "tiny-llama-demo", training_file = fileId, seed = 8, hyperparameters = new { n_epochs = 30, batch_size = 1 },
            });
            jobId = (string)job["id"]!;
            var deadline = DateTime.UtcNow.AddMinutes(2);
            do
            {
                await Task.Delay(50);
                beforeKill = MetricSteps(await Events(first.Http, jobId)).Count;
            } while (beforeKill < 35 && DateTime.UtcNow < deadline);
            // The training-token counter rises while the job trains (OpenTelemetry's exporter, read twice).
            double trained = Metrics.Value(await first.Http.GetStringAsync("/metrics"), "adapter_service_training_tokens_total"), now;
            var rising = DateTime.UtcNow.AddSeconds(30);
            do
            {
                await Task.Delay(200);
                now = Metrics.Value(await first.Http.GetStringAsync("/metrics"), "adapter_service_training_tokens_total");
            } while (now <= trained && DateTime.UtcNow < rising);
            Assert.True(trained > 0 && now > trained, $"training tokens {trained}, then {now}");
            await first.KillAsync();
        }
        Assert.InRange(beforeKill, 35, 299);

        await using var second = await ServiceProcess.StartAsync(folder.FullName, stateEvery);
        var done = await Api.WaitForFinishAsync(second.Http, jobId);
        Api.AssertSucceeded(done);
        // The job gauge, seeded at start (the job was running) and kept by the transitions since (re-queued, claimed, succeeded).
        var metrics = await second.Http.GetStringAsync("/metrics");
        Assert.Contains("# TYPE kestrel_active_connections gauge", metrics);
        foreach (var (status, count) in new[] { ("succeeded", 1), ("running", 0), ("queued", 0) })
            Assert.Equal(count, Metrics.Value(metrics, "adapter_service_jobs", $"status=\"{status}\""));

        var events = await Events(second.Http, jobId);
        Assert.Equal(Enumerable.Range(1, 300), MetricSteps(events));   // every step reported exactly once, none lost
        var resumed = events.Select(e => (string)e!["message"]!).Single(m => m.StartsWith("Fine-tuning job resumed from step", StringComparison.Ordinal));
        int from = int.Parse(resumed.Split(' ')[^1]);
        Assert.InRange(from, 30, 299);   // from a saved state near the kill (training ran on until the kill itself), not from the start
        Assert.Equal("In Paris.", await Api.ChatAsync(second.Http, (string)done["fine_tuned_model"]!, "Where is the Eiffel Tower?"));
    }

    [Fact]
    public async Task UploadsOverTheConfiguredLimitAreRefusedWith413()
    {
        using var folder = new TempFolder("adapter-service-limit-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName, ("Files__MaxUploadBytes", "2000"));
        var small = Enumerable.Repeat(Api.ChatLine("q", "a"), 10);
        await Api.UploadFileAsync(service.Http, small);
        var big = string.Join("\n", Enumerable.Repeat(Api.ChatLine("question", "answer"), 100));
        await Api.AssertErrorAsync(await Api.UploadAsync(service.Http, big), 413, "file");
    }

    [Fact]
    public async Task AnOverloadedEngineAnswers429WithRetryAfter()
    {
        using var folder = new TempFolder("adapter-service-busy-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName, ("Inference__MaxBatch", "1"), ("Inference__MaxQueued", "2"));
        var responses = await Task.WhenAll(Enumerable.Range(0, 12).Select(_ => service.Http.PostAsJsonAsync("/v1/completions",
            new { model = "tiny-llama-demo", prompt = "go", max_tokens = 200, temperature = 0 })));
        Assert.Contains(responses, r => r.IsSuccessStatusCode);
        var busy = responses.Where(r => (int)r.StatusCode == 429).ToList();
        Assert.NotEmpty(busy);
        Assert.All(busy, r => Assert.Equal("1", r.Headers.GetValues("Retry-After").Single()));
        await Api.AssertErrorAsync(busy[0], 429);
    }

    static async Task<JsonArray> Events(HttpClient http, string jobId) =>
        (await Api.JsonAsync(await http.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=1000")))["data"]!.AsArray();

    static List<int> MetricSteps(JsonArray events) =>
        events.Where(e => (string?)e!["type"] == "metrics").Select(e => (int)e!["data"]!["step"]!).Reverse().ToList();
}
