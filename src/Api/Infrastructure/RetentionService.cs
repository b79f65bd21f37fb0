using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Infrastructure;

/// <summary>Runs <see cref="Retention.Sweep"/> every <c>Retention:SweepMinutes</c> when a retention is set (sweeps in several processes remove the same things, harmlessly).</summary>
public sealed class RetentionService(IServiceScopeFactory scopes, IOptions<RetentionOptions> options, ILogger<RetentionService> log) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stopping)
    {
        var o = options.Value;
        if (o.CheckpointDays <= 0 && o.TrainerStateDays <= 0) return;
        using var timer = new PeriodicTimer(TimeSpan.FromMinutes(Math.Max(1, o.SweepMinutes)));
        do
        {
            try
            {
                using var scope = scopes.CreateScope();
                var swept = Retention.Sweep(scope.ServiceProvider.GetRequiredService<ServiceDbContext>(),
                    scope.ServiceProvider.GetRequiredService<IBlobStore>(), o, DateTimeOffset.UtcNow.ToUnixTimeSeconds());
                if (swept != new RetentionSweep(0, 0, 0))
                    log.LogInformation("Retention removed {Checkpoints} checkpoints, {States} trainer states and {Orphans} folders of jobs that are gone",
                        swept.Checkpoints, swept.TrainerStates, swept.OrphanFolders);
            }
            catch (Exception e) when (e is not OperationCanceledException)
            {
                log.LogWarning(e, "Retention sweep failed; it runs again in {Minutes} min", o.SweepMinutes);
            }
        }
        while (await timer.WaitForNextTickAsync(stopping));
    }
}
