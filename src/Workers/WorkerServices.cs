using AdapterService.Core.Storage;
using Hangfire;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterService.Workers;

public static class WorkerServices
{
    /// <summary>
    /// Storage plus a Hangfire server that trains jobs in this process. <c>Workers:Concurrency</c> (default 1) caps how
    /// many jobs train at once: each uses every core through TorchSharp, so more rarely finishes sooner on a CPU.
    /// </summary>
    public static IServiceCollection AddFineTuningWorker(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddServiceStorage(configuration);
        services.AddScoped<FineTuningJobRunner>();
        services.Configure<TrainingOptions>(configuration.GetSection("Workers"));
        services.AddHangfireServer(o =>
        {
            o.WorkerCount = configuration.GetValue("Workers:Concurrency", 1);
            o.Queues = [FineTuningQueue];
        });
        return services;
    }

    public const string FineTuningQueue = "fine-tuning";
}
