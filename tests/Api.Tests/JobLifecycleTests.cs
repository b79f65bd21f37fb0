using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

[Collection(ServiceCollection.Name)]
public sealed class JobLifecycleTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    async Task<string> FileAsync(string answer = "Paris") =>
        await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Capital of France?", answer), 10));

    static List<int> MetricSteps(JsonObject events) =>
        events["data"]!.AsArray().Where(e => (string?)e!["type"] == "metrics").Select(e => (int)e!["data"]!["step"]!).Reverse().ToList();

    [Fact]
    public async Task APausedJobResumesWhereItStoppedAndReportsEveryStepOnce()
    {
        var fileId = await FileAsync();
        var job = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = fileId, seed = 4, hyperparameters = new { n_epochs = 18, batch_size = 1 },
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
        // A quick pause and resume again, while the job is in the middle of a step.
        await Api.WaitForJobAsync(client, jobId, s => s == "running");
        await client.PostAsync($"/v1/fine_tuning/jobs/{jobId}/pause", null);
        await Task.Delay(300);
        Assert.Equal("queued", (string?)(await Api.JsonAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{jobId}/resume", null)))["status"]);
        var done = await Api.WaitForFinishAsync(client, jobId);
        Api.AssertSucceeded(done);

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
            model = "tiny-llama-demo", training_file = fileId, seed = 2, suffix = "ckpt", hyperparameters = new { n_epochs = 25, batch_size = 10 },
        });
        var jobId = (string)job["id"]!;
        var done = await Api.WaitForFinishAsync(client, jobId);
        Api.AssertSucceeded(done);

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
    public async Task AValidationFileIsMeasuredAtEveryEpochEnd()
    {
        var training = await FileAsync();
        var validation = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Capital of France?", "Paris"), 3)
            .Append(Api.ChatLine("Capital of Italy?", "Rome")));
        var job = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = training, validation_file = validation, seed = 6, hyperparameters = new { n_epochs = 4, batch_size = 5 },
        });
        Assert.Equal(validation, (string?)job["validation_file"]);
        var jobId = (string)job["id"]!;
        Api.AssertSucceeded(await Api.WaitForFinishAsync(client, jobId));

        var events = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=1000"));
        var metrics = events["data"]!.AsArray().Select(e => e!["data"]).Where(d => d?["step"] is not null).Reverse().ToList();
        Assert.Equal([2, 4, 6, 8], metrics.Where(m => m!["valid_loss"] is not null).Select(m => (int)m!["step"]!));
        var validLosses = metrics.Where(m => m!["valid_loss"] is not null).Select(m => (double)m!["valid_loss"]!).ToList();
        Assert.True(validLosses[^1] < validLosses[0], $"validation loss went from {validLosses[0]} to {validLosses[^1]}");
        var checkpoint = (await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/checkpoints")))["data"]![0]!;
        Assert.Equal(validLosses[^1], (double)checkpoint["metrics"]!["valid_loss"]!, 6);
        Assert.InRange((double)checkpoint["metrics"]!["valid_mean_token_accuracy"]!, 0.5, 1.0);
    }

    [Fact]
    public async Task EarlyStoppingEndsTheJobWhenTheValidationLossStopsImproving()
    {
        var training = await FileAsync("Paris");
        var validation = await Api.UploadFileAsync(client, [Api.ChatLine("Capital of France?", "Rome")]);   // fitting the training data hurts it
        var job = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = training, validation_file = validation, seed = 3,
            hyperparameters = new { n_epochs = 40, batch_size = 5, early_stopping_patience = 2 },
        });
        Assert.Equal(2, (int)job["hyperparameters"]!["early_stopping_patience"]!);
        var jobId = (string)job["id"]!;
        var done = await Api.WaitForFinishAsync(client, jobId);
        Api.AssertSucceeded(done);
        var events = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=1000"));
        var messages = events["data"]!.AsArray().Select(e => (string)e!["message"]!).ToList();
        var stopped = messages.Single(m => m.StartsWith("Early stopping at step", StringComparison.Ordinal));
        int step = int.Parse(stopped.Split(' ')[4].TrimEnd(':'));
        Assert.InRange(step, 6, 78);   // at least patience + 1 epochs, and before the end
        Assert.DoesNotContain(events["data"]!.AsArray(), e => (int?)e!["data"]?["step"] > step);

        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/fine_tuning/jobs", new
        {
            model = "tiny-llama-demo", training_file = training, hyperparameters = new { early_stopping_patience = 2 },
        }), 400, "hyperparameters.early_stopping_patience");
    }

    [Fact]
    public async Task TheSameSeedTrainsTheSameAdapter()
    {
        var fileId = await FileAsync("Marseille");
        async Task<byte[]> TrainAsync()
        {
            var job = await Api.CreateJobAsync(client, new
            {
                model = "tiny-llama-demo", training_file = fileId, seed = 1234,
                hyperparameters = new { n_epochs = 2, batch_size = 3 }, adapter = new { type = "lora", dropout = 0.1 },
            });
            var done = await Api.WaitForFinishAsync(client, (string)job["id"]!);
            var adapter = factory.Query(db => db.Adapters.Single(a => a.Name == (string)done["fine_tuned_model"]!));
            return await File.ReadAllBytesAsync(Path.Combine(factory.DataDirectory, "blobs", adapter.BlobPath, "adapter_model.safetensors"));
        }
        // Inference in flight meanwhile must not disturb training's random draws (LoRA init, dropout masks).
        var noise = Task.Run(async () =>
        {
            for (int i = 0; i < 5; i++)   // unseeded sampling draws from the global generator
                await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-llama-demo", prompt = "noise", max_tokens = 30, temperature = 1 });
        });
        var first = await TrainAsync();
        await noise;
        Assert.Equal(first, await TrainAsync());
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
