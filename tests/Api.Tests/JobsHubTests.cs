using AdapterService.Core.Jobs;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.SignalR.Client;

namespace AdapterService.Api.Tests;

[Collection(ServiceCollection.Name)]
public sealed class JobsHubTests(ServiceFactory factory)
{
    [Fact]
    public async Task ASignalRClientReceivesOrderedProgressAndTheFinalStatus()
    {
        var client = factory.CreateClient();
        await using var hub = new HubConnectionBuilder()
            .WithUrl(new Uri(factory.Server.BaseAddress, "hubs/jobs"), o =>
            {
                o.HttpMessageHandlerFactory = _ => factory.Server.CreateHandler();
                o.Transports = HttpTransportType.LongPolling;
            })
            .Build();
        var progress = new List<ProgressMessage>();
        var finished = new TaskCompletionSource<StatusMessage>(TaskCreationOptions.RunContinuationsAsynchronously);
        hub.On<ProgressMessage>("progress", m => { lock (progress) progress.Add(m); });
        hub.On<StatusMessage>("status", m => { if (m.Status is "succeeded" or "failed" or "cancelled") finished.TrySetResult(m); });
        await hub.StartAsync();

        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Greet me", "Hello there, friend!"), 10));
        var job = await Api.CreateJobAsync(client, new
        {
            model = "tiny-llama-demo", training_file = fileId, seed = 1,
            hyperparameters = new { n_epochs = 10, batch_size = 2, learning_rate_multiplier = 1 },
        });
        var jobId = (string)job["id"]!;
        await hub.InvokeAsync("SubscribeToJob", jobId);

        var status = await finished.Task.WaitAsync(TimeSpan.FromMinutes(3));
        Assert.Equal("succeeded", status.Status);
        Assert.Equal((string?)(await Api.WaitForFinishAsync(client, jobId))["fine_tuned_model"], status.FineTunedModel);

        List<ProgressMessage> seen;
        lock (progress) seen = progress.ToList();
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
