using AdapterService.Core.Jobs;

namespace AdapterService.Api.Tests;

[Collection(ServiceCollection.Name)]
public sealed class JobsHubTests(ServiceFactory factory)
{
    [Fact]
    public async Task ASignalRClientReceivesOrderedProgressAndTheFinalStatus()
    {
        var client = factory.CreateClient();
        await using var hub = await JobHubClient.ConnectAsync(factory);

        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Greet me", "Hello there, friend!"), 10));
        var job = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = fileId, seed = 1,
            hyperparameters = new { n_epochs = 10, batch_size = 2, learning_rate_multiplier = 1 },
        });
        var jobId = (string)job["id"]!;
        await hub.SubscribeAsync(jobId);

        var status = await hub.FinishedAsync(TimeSpan.FromMinutes(3));
        Assert.Equal("succeeded", status.Status);
        Assert.Equal((string?)(await Api.WaitForFinishAsync(client, jobId))["fine_tuned_model"], status.FineTunedModel);

        var seen = hub.Progress();
        Assert.True(seen.Count >= 20, $"only {seen.Count} progress messages");
        Assert.All(seen, m => Assert.Equal(jobId, m.JobId));
        Assert.Equal(Enumerable.Range(seen[0].Step, seen.Count), seen.Select(m => m.Step));   // consecutive, in order
        Assert.Equal(50, seen[^1].Step);
        Assert.Equal(50, seen[^1].TotalSteps);
        Assert.All(seen, m => Assert.True(m.TokensPerSecond > 0 && m.LearningRate > 0 && m.EtaSeconds >= 0));
        double early = seen.Take(5).Average(m => m.TrainLoss), late = seen.TakeLast(5).Average(m => m.TrainLoss);
        Assert.True(late < early * 0.5, $"loss went from {early} to {late}");
    }
}
