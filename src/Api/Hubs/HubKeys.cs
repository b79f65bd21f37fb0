using System.Collections.Concurrent;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.SignalR;
using Microsoft.EntityFrameworkCore;

namespace AdapterService.Api.Hubs;

/// <summary>
/// The hub's live connections by the project key that opened them. A key is checked once, when a connection opens, so
/// revoking it must close its connections: at once in the process that revoked it (<see cref="Revoked"/>), and within
/// <see cref="SweepInterval"/> in every other process of a scaled-out service (the sweep finds keys gone from the database).
/// </summary>
public sealed class HubKeys(IServiceScopeFactory scopes, ILogger<HubKeys> log) : BackgroundService
{
    public static readonly TimeSpan SweepInterval = TimeSpan.FromSeconds(10);
    readonly ConcurrentDictionary<string, (string KeyId, HubCallerContext Context)> connections = new();

    public void Opened(HubCallerContext context)
    {
        if (context.User?.KeyId() is { } keyId) connections[context.ConnectionId] = (keyId, context);
    }

    public void Closed(HubCallerContext context) => connections.TryRemove(context.ConnectionId, out _);

    /// <summary>Closes the connections opened with <paramref name="keyId"/>; returns how many.</summary>
    public int Revoked(string keyId)
    {
        int closed = 0;
        foreach (var (id, (key, context)) in connections)
            if (key == keyId && connections.TryRemove(id, out _))
            {
                context.Abort();
                closed++;
            }
        return closed;
    }

    protected override async Task ExecuteAsync(CancellationToken stop)
    {
        using var timer = new PeriodicTimer(SweepInterval);
        while (await timer.WaitForNextTickAsync(stop))
        {
            var keys = connections.Values.Select(c => c.KeyId).Distinct().ToList();
            if (keys.Count == 0) continue;
            try
            {
                using var scope = scopes.CreateScope();
                var db = scope.ServiceProvider.GetRequiredService<ServiceDbContext>();
                var live = await db.ApiKeys.AsNoTracking().IgnoreQueryFilters().Where(k => keys.Contains(k.Id)).Select(k => k.Id).ToListAsync(stop);
                foreach (var gone in keys.Except(live)) Revoked(gone);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                log.LogWarning(e, "Checking the hub's keys failed; retrying in {Interval}", SweepInterval);
            }
        }
    }
}
