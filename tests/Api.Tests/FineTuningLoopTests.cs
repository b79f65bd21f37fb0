using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

[Collection(ServiceCollection.Name)]
public sealed class FineTuningLoopTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    static IEnumerable<string> Repeat(int times, params (string User, string Assistant)[] pairs) =>
        Enumerable.Repeat(pairs, times).SelectMany(p => p).Select(p => Api.ChatLine(p.User, p.Assistant));

    [Fact]
    public async Task UploadTrainServeWithTheFineTunedModel()
    {
        var fileId = await Api.UploadFileAsync(client, Repeat(5, ("What color is the sky?", "Blue"), ("What is 2+2?", "Four")));
        var file = await Api.JsonAsync(await client.GetAsync($"/v1/files/{fileId}"));
        Assert.Equal("fine-tune", (string?)file["purpose"]);

        var created = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = fileId, suffix = "sky", seed = 7,
            hyperparameters = new { n_epochs = 12, batch_size = 2, learning_rate_multiplier = 1 },
            adapter = new { type = "lora", rank = 8, alpha = 16, dropout = 0.0, target_modules = new[] { "q_proj", "v_proj" } },
        });
        Assert.Equal("fine_tuning.job", (string?)created["object"]);
        Assert.Contains((string)created["status"]!, new[] { "validating_files", "queued", "running" });
        Assert.Equal(12, (int)created["hyperparameters"]!["n_epochs"]!);
        var jobId = (string)created["id"]!;

        var job = await Api.WaitForFinishAsync(client, jobId);
        Api.AssertSucceeded(job);
        var model = (string)job["fine_tuned_model"]!;
        Assert.Equal($"ft:tiny-llama-demo:sky:{jobId}", model);
        Assert.True((long)job["trained_tokens"]! > 0);

        var models = await Api.JsonAsync(await client.GetAsync("/v1/models"));
        Assert.Contains(models["data"]!.AsArray(), m => (string?)m!["id"] == model);
        Assert.Equal("Blue", await Api.ChatAsync(client, model, "What color is the sky?"));
        Assert.Equal("Four", await Api.ChatAsync(client, model, "What is 2+2?"));

        // The job's event log holds its metrics, in order, and ends with success.
        var events = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=1000"));
        var metrics = events["data"]!.AsArray().Where(e => (string?)e!["type"] == "metrics").Reverse().ToList();
        Assert.Equal(Enumerable.Range(1, 60), metrics.Select(e => (int)e!["data"]!["step"]!));
        Assert.Equal("The job has successfully completed", (string?)events["data"]![0]!["message"]);

        // The adapter is stored as a row with its blob folder in the PEFT layout.
        var adapter = factory.Query(db => db.Adapters.Single(a => a.Name == model));
        Assert.Equal(("tiny-llama-demo", "lora"), (adapter.BaseModel, adapter.Method));
        Assert.Equal(4 * 8 * (128 + 128) + 4 * 8 * (128 + 64), adapter.ParameterCount);   // q: 128->128, v: 128->64 (2 kv heads)
        var folder = Path.Combine(factory.DataDirectory, "blobs", adapter.BlobPath);
        Assert.True(File.Exists(Path.Combine(folder, "adapter_config.json")));
        Assert.Equal(adapter.SizeBytes, new DirectoryInfo(folder).EnumerateFiles().Sum(f => f.Length));
    }

    [Fact]
    public async Task EachRequestGetsItsOwnAdapterEvenWhenInFlightTogether()
    {
        const string prompt = "Name a fruit.";
        async Task<string> Train(string answer)
        {
            var fileId = await Api.UploadFileAsync(client, Repeat(10, (prompt, answer)));
            var job = await Api.CreateJobAsync(client, new
            {
                model = "tiny-llama-demo", training_file = fileId, seed = 3, suffix = answer.ToLowerInvariant(),
                hyperparameters = new { n_epochs = 12, batch_size = 2, learning_rate_multiplier = 1 },
            });
            return (string)(await Api.WaitForFinishAsync(client, (string)job["id"]!))["fine_tuned_model"]!;
        }
        var apple = await Train("Apple");
        var banana = await Train("Banana");
        string baseAlone = await Api.ChatAsync(client, "tiny-llama-demo", prompt, maxTokens: 8);

        var answers = await Task.WhenAll(Enumerable.Range(0, 6).Select(i =>
            Api.ChatAsync(client, (i % 3) switch { 0 => apple, 1 => banana, _ => "tiny-llama-demo" }, prompt, maxTokens: 8)));

        for (int i = 0; i < answers.Length; i++)
            Assert.Equal((i % 3) switch { 0 => "Apple", 1 => "Banana", _ => baseAlone }, answers[i]);
        Assert.NotEqual("Apple", baseAlone);
    }

    [Fact]
    public async Task CancelStopsARunningJobWithinAStep()
    {
        var fileId = await Api.UploadFileAsync(client, Repeat(10, ("Count", "one two three four five six seven eight nine ten")));
        var job = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 50, batch_size = 1 },
        });
        var jobId = (string)job["id"]!;
        await Api.WaitForJobAsync(client, jobId, s => s == "running");
        int MetricEvents() => factory.Query(db => db.JobEvents.Count(e => e.JobId == jobId && e.Type == "metrics"));
        var deadline = DateTime.UtcNow.AddMinutes(1);
        while (MetricEvents() < 2 && DateTime.UtcNow < deadline) await Task.Delay(50);

        var cancelled = await Api.JsonAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{jobId}/cancel", null));
        Assert.Equal("cancelled", (string?)cancelled["status"]);
        int atCancel = MetricEvents();
        await Task.Delay(1500);
        Assert.InRange(MetricEvents(), atCancel, atCancel + 1);   // the step in flight may finish; no more start
        Assert.True(atCancel + 1 < 500, "the job should not have finished before the cancel");

        var final = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}"));
        Assert.Equal("cancelled", (string?)final["status"]);
        Assert.Null((string?)final["fine_tuned_model"]);
        Assert.False(factory.Query(db => db.Adapters.Any(a => a.JobId == jobId)));
        await Api.AssertErrorAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{jobId}/cancel", null), 400, "id");
    }

    [Fact]
    public async Task JobsListIsPagedNewestFirst()
    {
        var fileId = await Api.UploadFileAsync(client, Repeat(10, ("a", "b")));
        var ids = new List<string>();
        for (int i = 0; i < 3; i++)
        {
            var job = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 1 } });
            ids.Add((string)job["id"]!);
        }
        var first = await Api.JsonAsync(await client.GetAsync("/v1/fine_tuning/jobs?limit=2"));
        Assert.Equal("list", (string?)first["object"]);
        Assert.True((bool)first["has_more"]!);
        var page = first["data"]!.AsArray().Select(j => (string)j!["id"]!).ToList();
        Assert.Equal([ids[2], ids[1]], page);
        var next = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs?limit=1&after={page[^1]}"));
        Assert.Equal(ids[0], (string?)next["data"]![0]!["id"]);
        foreach (var id in ids) await Api.WaitForFinishAsync(client, id);
    }
}
