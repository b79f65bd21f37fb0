using System.Net;
using System.Net.Http.Json;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Core.Jobs;

namespace AdapterService.Api.Tests;

/// <summary>The built-in language model end to end: pre-training as a job followed live, then completions and a LoRA job on it.</summary>
[Collection(ServiceCollection.Name)]
public class PretrainingApiTests(ServiceFactory factory)
{
    const string Model = "fortunes-llama-demo";

    [Fact]
    public async Task PretrainingIsAJobFollowedLiveThenTheModelServesAndFineTunes()
    {
        var client = factory.CreateClient();
        await using var hub = await JobHubClient.ConnectAsync(factory);

        var response = await client.PostAsync($"/v1/models/{Model}/pretrain", null);
        var queued = await Api.JsonAsync(response);
        Assert.Equal(HttpStatusCode.Accepted, response.StatusCode);
        var jobId = (string)queued["job_id"]!;
        await hub.SubscribeAsync(jobId);
        // Asked again while it trains: the same job, not a second one.
        var again = await client.PostAsync($"/v1/models/{Model}/pretrain", null);
        if (again.StatusCode == HttpStatusCode.Accepted) Assert.Equal(jobId, (string)(await Api.JsonAsync(again))["job_id"]!);
        // It keeps no state to resume from, so it can be cancelled but not paused.
        await Api.AssertErrorAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{jobId}/pause", null), 400, "id");

        var status = await hub.FinishedAsync(TimeSpan.FromMinutes(3));
        Assert.Equal(("succeeded", Model), (status.Status, status.FineTunedModel));
        var seen = hub.Progress();
        Assert.True(seen.Count >= 10, $"only {seen.Count} progress messages");
        Assert.All(seen, m => Assert.Equal(jobId, m.JobId));
        Assert.Equal(60, seen[^1].Step);

        // The job as the fine-tuning API shows it, and its events: a loss that falls, validation losses, success.
        var job = await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}"));
        Assert.Equal(("succeeded", Model, "pretraining", "debian:fortunes"),
            ((string)job["status"]!, (string)job["fine_tuned_model"]!, (string)job["method"]!["type"]!, (string)job["training_file"]!));
        var events = (await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=100")))["data"]!.AsArray()
            .Select(e => e!.AsObject()).Reverse().ToList();
        var metrics = events.Where(e => (string)e["type"]! == "metrics").Select(e => e["data"]!).ToList();
        Assert.Equal(Enumerable.Range(1, 60), metrics.Select(m => (int)m["step"]!));
        double early = metrics.Take(5).Average(m => (double)m["train_loss"]!), late = metrics.TakeLast(5).Average(m => (double)m["train_loss"]!);
        Assert.True(early - late > 1, $"training loss went from {early} to {late}");
        var validation = metrics.Where(m => m["valid_loss"] is not null).Select(m => (double)m["valid_loss"]!).ToList();
        Assert.Equal(3, validation.Count);
        Assert.True(validation[^1] < validation[0], string.Join(", ", validation));
        Assert.Equal("succeeded", (string)events[^1]["data"]!["status"]!);

        // Once trained, asking again answers with the model, whose row says what it was trained on.
        response = await client.PostAsync($"/v1/models/{Model}/pretrain", null);
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        Assert.Contains("fortunes", (string)(await Api.JsonAsync(response))["description"]!);

        var completion = await client.PostAsJsonAsync("/v1/completions", new { model = Model, prompt = "A fortune", max_tokens = 8, temperature = 0 });
        var body = await Api.JsonAsync(completion);
        Assert.True(completion.IsSuccessStatusCode, body.ToJsonString());
        Assert.False(string.IsNullOrEmpty((string?)body["choices"]![0]!["text"]));

        var fileId = await Api.UploadFileAsync(client, Enumerable.Range(0, 12).Select(i =>
            JsonSerializer.Serialize(new { prompt = $"Fortune {i}:", completion = " You will fix the bug today." })));
        var lora = await Api.CreateJobAsync(client, new
        {
            model = Model, training_file = fileId, seed = 1, hyperparameters = new { n_epochs = 3, batch_size = 4 }, adapter = new { type = "lora", rank = 4 },
        });
        var done = await Api.WaitForFinishAsync(client, (string)lora["id"]!);
        Assert.Equal("succeeded", (string)done["status"]!);
        completion = await client.PostAsJsonAsync("/v1/completions", new { model = (string)done["fine_tuned_model"]!, prompt = "Fortune 3:", max_tokens = 8, temperature = 0 });
        Assert.True(completion.IsSuccessStatusCode, await completion.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task OnlyBuiltInModelsArePretrained()
    {
        var client = factory.CreateClient();
        await Api.AssertErrorAsync(await client.PostAsync("/v1/models/tiny-llama-demo/pretrain", null), 404, "model");
        await Api.AssertErrorAsync(await client.PostAsync("/v1/models/no-such-model/pretrain", null), 404, "model");
    }
}
