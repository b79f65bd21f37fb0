using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

[Collection(ServiceCollection.Name)]
public sealed class JobLifecycleTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    async Task<string> FileAsync(string answer = "Paris") =>
        await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Capital of France?", answer), 6));

    static List<int> MetricSteps(JsonObject events) =>
        events["data"]!.AsArray().Where(e => (string?)e!["type"] == "metrics").Select(e => (int)e!["data"]!["step"]!).Reverse().ToList();

    [Fact]
    public async Task APausedJobResumesWhereItStoppedAndReportsEveryStepOnce()
    {
        var fileId = await FileAsync();
        var job = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = fileId, seed = 4, hyperparameters = new { n_epochs = 30, batch_size = 1 },
        });
        var jobId = (string)job["id"]!;
        await Api.WaitForJobAsync(client, jobId, s => s == "running");
        int Reported() => factory.Query(db => db.JobEvents.Count(e => e.JobId == jobId && e.Type == "metrics"));
        var deadline = DateTime.UtcNow.AddMinutes(1);
        while (Reported() < 10 && DateTime.UtcNow < deadline) await Task.Delay(20);

        var paused = await Api.JsonAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{jobId}/pause", null));
        Assert.Equal("paused", (string?)paused["status"]);
        await Task.Delay(1000);
        int atPause = Reported();
        await Task.Delay(500);
        Assert.Equal(atPause, Reported());   // stopped: no more steps while paused
        Assert.True(atPause < 180);
        await Api.AssertErrorAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{jobId}/pause", null), 400, "id");

        var resumed = await Api.JsonAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{jobId}/resume", null));
        Assert.Equal("queued", (string?)resumed["status"]);
        var done = await Api.WaitForFinishAsync(client, jobId);
        Assert.Equal("succeeded", (string?)done["status"]);

        var events = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=1000"));
        Assert.Equal(Enumerable.Range(1, 180), MetricSteps(events));
        var messages = events["data"]!.AsArray().Select(e => (string)e!["message"]!).ToList();
        Assert.Contains(messages, m => m.StartsWith("Fine-tuning job resumed from step", StringComparison.Ordinal));
        Assert.Equal("Paris", await Api.ChatAsync(client, (string)done["fine_tuned_model"]!, "Capital of France?"));
    }

    [Fact]
    public async Task EveryEpochLeavesACheckpointThatServesAsAModel()
    {
        var fileId = await FileAsync("Lyon");
        var job = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = fileId, seed = 2, suffix = "ckpt", hyperparameters = new { n_epochs = 25, batch_size = 6 },
        });
        var jobId = (string)job["id"]!;
        var done = await Api.WaitForFinishAsync(client, jobId);
        Assert.Equal("succeeded", (string?)done["status"]);

        var page = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/checkpoints?limit=3"));
        var checkpoints = page["data"]!.AsArray();
        Assert.True((bool)page["has_more"]!);
        Assert.Equal([25, 24, 23], checkpoints.Select(c => (int)c!["step_number"]!));
        var last = checkpoints[0]!;
        Assert.Equal("fine_tuning.job.checkpoint", (string?)last["object"]);
        Assert.Equal(jobId, (string?)last["fine_tuning_job_id"]);
        Assert.Equal($"ft:tiny-llama-demo:ckpt:{jobId}:ckpt-step-25", (string?)last["fine_tuned_model_checkpoint"]);
        Assert.True((double)last["metrics"]!["train_loss"]! >= 0);

        var rest = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/checkpoints?limit=100&after={(string)checkpoints[2]!["id"]!}"));
        Assert.Equal(Enumerable.Range(1, 22).Reverse(), rest["data"]!.AsArray().Select(c => (int)c!["step_number"]!));

        // The last epoch's checkpoint is the final adapter; an early one is a different, less trained model.
        Assert.Equal("Lyon", await Api.ChatAsync(client, (string)last["fine_tuned_model_checkpoint"]!, "Capital of France?"));
        var first = $"ft:tiny-llama-demo:ckpt:{jobId}:ckpt-step-1";
        Assert.NotEqual("Lyon", await Api.ChatAsync(client, first, "Capital of France?", maxTokens: 8));
        Assert.Equal(first, (string?)(await Api.JsonAsync(await client.GetAsync($"/v1/models/{first}")))["id"]);
    }

    [Fact]
    public async Task JobsCarryMetadataAndAreFilteredByIt()
    {
        var fileId = await FileAsync();
        var tag = Guid.NewGuid().ToString("N");
        var a = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 1 }, metadata = new Dictionary<string, string> { ["run"] = tag, ["team"] = "red" } });
        var b = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 1 }, metadata = new Dictionary<string, string> { ["run"] = tag, ["team"] = "blue" } });
        Assert.Equal("red", (string?)a["metadata"]!["team"]);

        var both = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs?metadata[run]={tag}"));
        Assert.Equal([(string)b["id"]!, (string)a["id"]!], both["data"]!.AsArray().Select(j => (string)j!["id"]!));
        var red = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs?metadata[run]={tag}&metadata[team]=red"));
        Assert.Equal([(string)a["id"]!], red["data"]!.AsArray().Select(j => (string)j!["id"]!));

        var tooMany = Enumerable.Range(0, 17).ToDictionary(i => $"k{i}", i => "v");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/fine_tuning/jobs", new { model = "tiny-llama-demo", training_file = fileId, metadata = tooMany }), 400, "metadata");
        await Api.WaitForFinishAsync(client, (string)a["id"]!);
        await Api.WaitForFinishAsync(client, (string)b["id"]!);
    }
}
