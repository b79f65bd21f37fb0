using System.Net.Http.Json;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterService.Api.Tests;

/// <summary>
/// The whole service in-process (real HTTP pipeline, SQLite, blob folder, Hangfire worker, inference engine) over a
/// temporary data folder. One instance is shared by the API tests: Hangfire's storage is process-wide.
/// </summary>
public class ServiceFactory : WebApplicationFactory<Program>
{
    public string DataDirectory { get; } = Path.Combine(Path.GetTempPath(), "adapter-service-tests", Guid.NewGuid().ToString("N"));

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        builder.UseSetting("Service:DataDirectory", DataDirectory);
        builder.UseSetting("Logging:LogLevel:Default", "Warning");
        // float32 bases: these tests hold served and trained results to float32 references computed in-process (a batch
        // equals its rows alone, fused jobs equal jobs alone); bf16 meets those only to its rounding. bf16 through the
        // service: PrecisionSettingTests; its numerics: Core.Tests' PrecisionTests and MethodMatrixTests.
        builder.UseSetting("Models:Precision", "fp32");
        // The built-in ViT pre-trained on a small subset in seconds (the default takes minutes).
        builder.UseSetting("Vision:Pretraining:TrainImages", "1000");
        builder.UseSetting("Vision:Pretraining:TestImages", "500");
        builder.UseSetting("Vision:Pretraining:Steps", "150");
        builder.UseSetting("Vision:Pretraining:BatchSize", "32");
        // The built-in language model: a tiny one on a few hundred fortunes (the default takes a quarter of an hour).
        foreach (var (key, value) in new Dictionary<string, string>
                 {
                     ["MaxEntries"] = "400", ["VocabSize"] = "400", ["HiddenSize"] = "32", ["IntermediateSize"] = "64", ["NumHiddenLayers"] = "2",
                     ["NumAttentionHeads"] = "2", ["ContextLength"] = "32", ["Steps"] = "60", ["BatchSize"] = "8", ["LearningRate"] = "0.005",
                     ["ValidateEverySteps"] = "20", ["ValidationWindows"] = "16",
                 })
            builder.UseSetting($"Text:Pretraining:{key}", value);
    }

    /// <summary>Reads the database directly, to check what is (not) stored.</summary>
    public T Query<T>(Func<ServiceDbContext, T> query)
    {
        using var scope = Services.CreateScope();
        return query(scope.ServiceProvider.GetRequiredService<ServiceDbContext>());
    }

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        try { Directory.Delete(DataDirectory, recursive: true); } catch (IOException) { }
    }
}

[CollectionDefinition(Name)]
public sealed class ServiceCollection : ICollectionFixture<ServiceFactory>
{
    public const string Name = "service";
}

/// <summary>What a user of the API does, in one place: upload, create jobs, wait, complete.</summary>
public static class Api
{
    public static string ChatLine(string user, string assistant) =>
        JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = user }, new { role = "assistant", content = assistant } } });

    public static async Task<HttpResponseMessage> UploadAsync(HttpClient client, string content, string purpose = "fine-tune")
    {
        using var form = new MultipartFormDataContent
        {
            { new StringContent(purpose), "purpose" },
            { new ByteArrayContent(Encoding.UTF8.GetBytes(content)), "file", "train.jsonl" },
        };
        return await client.PostAsync("/v1/files", form);
    }

    public static async Task<string> UploadFileAsync(HttpClient client, IEnumerable<string> lines)
    {
        var response = await UploadAsync(client, string.Join("\n", lines) + "\n");
        var body = await JsonAsync(response);
        Assert.True(response.IsSuccessStatusCode, body.ToJsonString());
        return (string)body["id"]!;
    }

    public static async Task<JsonObject> CreateJobAsync(HttpClient client, object request)
    {
        var response = await client.PostAsJsonAsync("/v1/fine_tuning/jobs", request);
        var body = await JsonAsync(response);
        Assert.True(response.IsSuccessStatusCode, body.ToJsonString());
        return body;
    }

    public static async Task<JsonObject> WaitForJobAsync(HttpClient client, string jobId, Func<string, bool> done, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromMinutes(3));
        while (true)
        {
            var job = await JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}"));
            if (done((string)job["status"]!)) return job;
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"job {jobId} still {job["status"]}");
            await Task.Delay(100);
        }
    }

    public static Task<JsonObject> WaitForFinishAsync(HttpClient client, string jobId) =>
        WaitForJobAsync(client, jobId, s => s is "succeeded" or "failed" or "cancelled");

    /// <summary>Asserts the job succeeded; when it did not, the failure says how it ended and why (its error object).</summary>
    public static void AssertSucceeded(JsonNode job) =>
        Assert.True((string?)job["status"] == "succeeded", $"job {job["id"]} ended {job["status"]}: {job["error"]?.ToJsonString() ?? "no error"}");

    /// <summary>Greedy chat completion text.</summary>
    public static async Task<string> ChatAsync(HttpClient client, string model, string prompt, int maxTokens = 24)
    {
        var response = await client.PostAsJsonAsync("/v1/chat/completions", new
        {
            model, temperature = 0, max_tokens = maxTokens, messages = new[] { new { role = "user", content = prompt } },
        });
        var body = await JsonAsync(response);
        Assert.True(response.IsSuccessStatusCode, body.ToJsonString());
        return (string)body["choices"]![0]!["message"]!["content"]!;
    }

    public static async Task<JsonObject> JsonAsync(HttpResponseMessage response) =>
        JsonNode.Parse(await response.Content.ReadAsStringAsync())!.AsObject();

    /// <summary>Asserts an OpenAI-style error object with the given status; returns the error body.</summary>
    public static async Task<JsonObject> AssertErrorAsync(HttpResponseMessage response, int status, string? param = null)
    {
        var text = await response.Content.ReadAsStringAsync();
        Assert.True((int)response.StatusCode == status, $"expected {status}, got {(int)response.StatusCode}: {text}");
        var error = JsonNode.Parse(text)!["error"]!.AsObject();
        Assert.False(string.IsNullOrWhiteSpace((string?)error["message"]));
        Assert.Equal(status == 429 ? "rate_limit_error" : "invalid_request_error", (string?)error["type"]);
        if (param is not null) Assert.Equal(param, (string?)error["param"]);
        return error;
    }
}
