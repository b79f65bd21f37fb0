using AdapterService.Core.Jobs;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.SignalR.Client;

namespace AdapterService.Api.Tests;

/// <summary>A real SignalR client on the test server's job hub: collects progress messages and the final status of the jobs it follows.</summary>
sealed class JobHubClient : IAsyncDisposable
{
    readonly HubConnection hub;
    readonly List<ProgressMessage> progress = [];
    readonly TaskCompletionSource<StatusMessage> finished = new(TaskCreationOptions.RunContinuationsAsynchronously);

    JobHubClient(HubConnection hub)
    {
        this.hub = hub;
        hub.On<ProgressMessage>("progress", m => { lock (progress) progress.Add(m); });
        hub.On<StatusMessage>("status", m => { if (m.Status is "succeeded" or "failed" or "cancelled") finished.TrySetResult(m); });
    }

    public static async Task<JobHubClient> ConnectAsync(ServiceFactory factory)
    {
        var client = new JobHubClient(new HubConnectionBuilder()
            .WithUrl(new Uri(factory.Server.BaseAddress, "hubs/jobs"), o =>
            {
                o.HttpMessageHandlerFactory = _ => factory.Server.CreateHandler();
                o.Transports = HttpTransportType.LongPolling;
            })
            .Build());
        await client.hub.StartAsync();
        return client;
    }

    public Task SubscribeAsync(string jobId) => hub.InvokeAsync("SubscribeToJob", jobId);

    /// <summary>The first final status (succeeded, failed, cancelled) received.</summary>
    public Task<StatusMessage> FinishedAsync(TimeSpan timeout) => finished.Task.WaitAsync(timeout);

    /// <summary>The progress messages received so far, in arrival order.</summary>
    public List<ProgressMessage> Progress() { lock (progress) return progress.ToList(); }

    public ValueTask DisposeAsync() => hub.DisposeAsync();
}
