using AdapterService.Api.Infrastructure;
using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.SignalR;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Hubs;

/// <summary>What the server calls on a subscribed client; the wire names are lowercase, which the dashboard and clients listen for.</summary>
public interface IJobsClient
{
    [HubMethodName("progress")]
    Task Progress(ProgressMessage progress);

    [HubMethodName("status")]
    Task Status(StatusMessage status);
}

/// <summary>
/// Live job progress. A client calls <c>SubscribeToJob(jobId)</c> and then receives <c>progress</c> and <c>status</c>
/// messages for that job (group <c>job:{id}</c>). Everything sent here is also persisted as the job's events.
/// </summary>
public sealed class JobsHub(ServiceDbContext db, HubKeys keys) : Hub<IJobsClient>
{
    public static string Group(string jobId) => $"job:{jobId}";

    public override Task OnConnectedAsync()
    {
        keys.Opened(Context);   // revoking the key closes this connection
        return base.OnConnectedAsync();
    }

    public override Task OnDisconnectedAsync(Exception? exception)
    {
        keys.Closed(Context);
        return base.OnDisconnectedAsync(exception);
    }

    /// <summary>Only a job of the caller's project: another project's job is refused as if it did not exist.</summary>
    public async Task SubscribeToJob(string jobId)
    {
        var project = Context.User?.ProjectId();
        if (project is null || !await db.Jobs.AnyAsync(j => j.Id == jobId && j.ProjectId == project, Context.ConnectionAborted))
            throw new HubException($"No such fine-tuning job: {jobId}");
        await Groups.AddToGroupAsync(Context.ConnectionId, Group(jobId));
    }

    public Task UnsubscribeFromJob(string jobId) => Groups.RemoveFromGroupAsync(Context.ConnectionId, Group(jobId));
}
