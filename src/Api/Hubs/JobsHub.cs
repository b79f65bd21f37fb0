using Microsoft.AspNetCore.SignalR;

namespace AdapterService.Api.Hubs;

/// <summary>
/// Live job progress. A client calls <c>SubscribeToJob(jobId)</c> and then receives <c>progress</c> and <c>status</c>
/// messages for that job (group <c>job:{id}</c>). Everything sent here is also persisted as the job's events.
/// </summary>
public sealed class JobsHub : Hub
{
    public static string Group(string jobId) => $"job:{jobId}";

    public Task SubscribeToJob(string jobId) => Groups.AddToGroupAsync(Context.ConnectionId, Group(jobId));

    public Task UnsubscribeFromJob(string jobId) => Groups.RemoveFromGroupAsync(Context.ConnectionId, Group(jobId));
}
