using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.SignalR;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Hubs;

/// <summary>
/// Sends every new job event to the job's SignalR group: metrics events as <c>progress</c>, status changes as
/// <c>status</c>. Polling the events table with a cursor works the same whether the job trains in this process or in a
/// worker on another machine, and whichever API process a browser is connected to; it costs one indexed query per tick.
/// </summary>
public sealed class JobEventRelay(IServiceScopeFactory scopes, IHubContext<JobsHub, IJobsClient> hub, IConfiguration configuration, ILogger<JobEventRelay> log)
    : BackgroundService
{
    // Ids are handed out before commit, so on PostgreSQL a slower transaction can commit an id below the cursor:
    // look back this far and skip what was sent already.
    const long LookBack = 256;

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        var interval = TimeSpan.FromMilliseconds(configuration.GetValue("Service:RelayIntervalMs", 100));
        long cursor = await WithDb(db => db.JobEvents.MaxAsync(e => (long?)e.Id, stop)) ?? 0;
        var sent = new HashSet<long>();
        using var timer = new PeriodicTimer(interval);
        while (await timer.WaitForNextTickAsync(stop))
        {
            try
            {
                long from = cursor - LookBack;
                // Ids first (an index scan), whole rows only for the ones not sent yet.
                var ids = await WithDb(db => db.JobEvents.Where(e => e.Id > from).OrderBy(e => e.Id).Select(e => e.Id).Take(1000).ToListAsync(stop));
                var fresh = ids.Where(id => !sent.Contains(id)).ToList();
                if (fresh.Count == 0) continue;
                var events = await WithDb(db => db.JobEvents.AsNoTracking().Where(e => fresh.Contains(e.Id)).OrderBy(e => e.Id).ToListAsync(stop));
                foreach (var e in events)
                {
                    sent.Add(e.Id);
                    var group = hub.Clients.Group(JobsHub.Group(e.JobId));
                    switch (JobEventData.ToMessage(e))
                    {
                        case ProgressMessage progress: await group.Progress(progress); break;
                        case StatusMessage status: await group.Status(status); break;
                    }
                    cursor = Math.Max(cursor, e.Id);
                }
                sent.RemoveWhere(id => id <= cursor - LookBack);
            }
            catch (Exception e) when (!stop.IsCancellationRequested)
            {
                log.LogWarning(e, "Relaying job events failed; retrying");
            }
        }
    }

    async Task<T> WithDb<T>(Func<ServiceDbContext, Task<T>> query)
    {
        using var scope = scopes.CreateScope();
        return await query(scope.ServiceProvider.GetRequiredService<ServiceDbContext>());
    }
}
