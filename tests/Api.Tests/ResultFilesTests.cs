using System.Globalization;
using System.Text.Json.Nodes;
using AdapterService.Core.Jobs;

namespace AdapterService.Api.Tests;

/// <summary>OpenAI's <c>result_files</c>: a finished job's step metrics as a CSV file of purpose <c>fine-tune-results</c>.</summary>
[Collection(ServiceCollection.Name)]
public sealed class ResultFilesTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    [Fact]
    public async Task AFinishedJobListsAResultFileWithOneRowPerStep()
    {
        var training = await Api.UploadFileAsync(client, Enumerable.Range(0, 10).Select(i => Api.ChatLine($"Question {i}?", $"Answer {i}.")));
        var validation = await Api.UploadFileAsync(client, Enumerable.Range(0, 4).Select(i => Api.ChatLine($"Question {i}?", $"Answer {i}.")));
        var created = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = training, validation_file = validation, seed = 1,
            hyperparameters = new { n_epochs = 2, batch_size = 5 },
        });
        Assert.Empty(created["result_files"]!.AsArray());
        var job = await Api.WaitForFinishAsync(client, (string)created["id"]!);
        Api.AssertSucceeded(job);
        var resultFile = Assert.Single(job["result_files"]!.AsArray().Select(f => (string)f!));

        var file = await Api.JsonAsync(await client.GetAsync($"/v1/files/{resultFile}"));
        Assert.Equal("fine-tune-results", (string?)file["purpose"]);
        Assert.Equal("step_metrics.csv", (string?)file["filename"]);
        var listed = await Api.JsonAsync(await client.GetAsync("/v1/files?purpose=fine-tune-results"));
        Assert.Contains(resultFile, listed["data"]!.AsArray().Select(f => (string)f!["id"]!));

        // One row per step (2 epochs of 2 steps), OpenAI's columns first, each value the step's metrics event's.
        var lines = (await client.GetStringAsync($"/v1/files/{resultFile}/content")).TrimEnd('\n').Split('\n');
        var header = lines[0].Split(',');
        Assert.Equal(["step", "train_loss", "train_accuracy", "valid_loss", "valid_mean_token_accuracy"], header[..5]);
        Assert.Contains("learning_rate", header);
        var rows = lines[1..].Select(line => header.Zip(line.Split(',')).ToDictionary(p => p.First, p => p.Second)).ToList();
        Assert.Equal(["1", "2", "3", "4"], rows.Select(r => r["step"]));
        var events = (await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{job["id"]}/events?limit=100")))["data"]!.AsArray()
            .Where(e => (string?)e!["type"] == "metrics").Select(e => e!["data"]!).OrderBy(d => (int)d["step"]!).ToList();
        Assert.Equal(4, events.Count);
        foreach (var (row, data) in rows.Zip(events))
        {
            Assert.Equal((double)data["train_loss"]!, double.Parse(row["train_loss"], CultureInfo.InvariantCulture));
            Assert.Equal((double)data["train_mean_token_accuracy"]!, double.Parse(row["train_accuracy"], CultureInfo.InvariantCulture));
            Assert.Equal((double)data["learning_rate"]!, double.Parse(row["learning_rate"], CultureInfo.InvariantCulture));
            // Validation runs at each epoch's end (steps 2 and 4); the other steps leave the cell empty.
            Assert.Equal(data["valid_loss"] is null ? "" : ((double)data["valid_loss"]!).ToString("R", CultureInfo.InvariantCulture),
                row["valid_loss"].Length == 0 ? "" : double.Parse(row["valid_loss"], CultureInfo.InvariantCulture).ToString("R", CultureInfo.InvariantCulture));
        }
        Assert.Equal(["", "x", "", "x"], rows.Select(r => r["valid_loss"].Length == 0 ? "" : "x"));

        // A result file is no training file.
        var misuse = await client.PostAsync("/v1/fine_tuning/jobs", JsonContent(new { model = "tiny-llama-demo", training_file = resultFile }));
        await Api.AssertErrorAsync(misuse, 400, "training_file");
    }

    [Fact]
    public async Task ACancelledJobWithStepsKeepsItsStepsAndOneCancelledBeforeAnyHasNone()
    {
        var training = await Api.UploadFileAsync(client, Enumerable.Range(0, 10).Select(i => Api.ChatLine($"Q{i}?", $"A{i}.")));
        var running = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = training, hyperparameters = new { n_epochs = 50, batch_size = 1 } });
        var id = (string)running["id"]!;
        // Wait for a reported step, then cancel: the file holds the steps reported by then.
        for (var deadline = DateTime.UtcNow.AddMinutes(2); ; await Task.Delay(100))
        {
            var events = (await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{id}/events?limit=100")))["data"]!.AsArray();
            if (events.Any(e => (string?)e!["type"] == "metrics")) break;
            Assert.True(DateTime.UtcNow < deadline, "no step reported");
        }
        var cancelled = await Api.JsonAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{id}/cancel", null));
        Assert.Equal("cancelled", (string?)cancelled["status"]);
        var resultFile = Assert.Single(cancelled["result_files"]!.AsArray().Select(f => (string)f!));
        var csv = (await client.GetStringAsync($"/v1/files/{resultFile}/content")).TrimEnd('\n').Split('\n');
        Assert.True(csv.Length >= 2, string.Join("\n", csv));

        // Cancelled at once. A free worker may report a step first (or one in flight just after): with no step reported even
        // after the cancel there is no file; with one reported before it, there is.
        var queued = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = training, hyperparameters = new { n_epochs = 50 } });
        async Task<bool> Stepped() => (await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{queued["id"]}/events?limit=100")))["data"]!
            .AsArray().Any(e => (string?)e!["type"] == "metrics");
        bool before = await Stepped();
        var never = await Api.JsonAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{queued["id"]}/cancel", null));
        Assert.Equal("cancelled", (string?)never["status"]);
        int files = never["result_files"]!.AsArray().Count;
        if (before) Assert.Equal(1, files);
        if (!await Stepped()) Assert.Equal(0, files);
    }

    [Fact]
    public void ColumnsComeFromTheMetricsFieldsSoNewMetricsAddColumns()
    {
        var csv = JobResultFiles.Csv([
            """{"step": 2, "train_loss": 0.5, "train_mean_token_accuracy": 0.25, "valid_loss": null, "epoch": 1}""",
            """{"step": 1, "train_loss": 0.75, "train_mean_token_accuracy": 0.125, "epoch": 1, "adapter": {"router": [0.5, 0.5], "name": "a,b"}}""",
            """{"step": 2, "train_loss": 0.4, "train_mean_token_accuracy": 0.3, "valid_loss": 1.5, "epoch": 1, "reward_margin": 0.01}""",
        ]);
        Assert.Equal(
            "step,train_loss,train_accuracy,valid_loss,valid_mean_token_accuracy,epoch,adapter.router,adapter.name,reward_margin\n" +
            "1,0.75,0.125,,,1,\"[0.5, 0.5]\",\"a,b\",\n" +
            "2,0.4,0.3,1.5,,1,,,0.01\n",   // the step's last report wins (a step redone after a crash)
            csv);
    }

    static StringContent JsonContent(object body) =>
        new(System.Text.Json.JsonSerializer.Serialize(body), System.Text.Encoding.UTF8, "application/json");
}
