using AdapterService.Core.Storage;
using AdapterService.Core.Vision;
using Hangfire;
using Hangfire.PostgreSql;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterService.Workers;

public static class WorkerServices
{
    public const string FineTuningQueue = "fine-tuning";

    /// <summary>
    /// Hangfire's storage: in memory for the embedded default (the database rows are the truth; unfinished jobs are
    /// re-queued at start), PostgreSQL for scale-out, shared by the API and every worker. A job whose worker died is
    /// fetched again after <c>Workers:InvisibilityTimeoutSeconds</c> (default 300) and resumes from its saved state.
    /// </summary>
    public static IServiceCollection AddJobQueue(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddHangfire(c =>
        {
            c.UseSimpleAssemblyNameTypeSerializer().UseRecommendedSerializerSettings();
            if (ServiceStorage.Provider(configuration) == "postgres")
                c.UsePostgreSqlStorage(o => o.UseNpgsqlConnection(configuration.GetConnectionString("Database")), new PostgreSqlStorageOptions
                {
                    InvisibilityTimeout = TimeSpan.FromSeconds(configuration.GetValue("Workers:InvisibilityTimeoutSeconds", 300)),
                    // Kept alive while its worker lives, so a long job is not handed to a second worker meanwhile.
                    UseSlidingInvisibilityTimeout = true,
                    QueuePollInterval = TimeSpan.FromSeconds(1),
                });
            else c.UseInMemoryStorage();
        });
        return services;
    }

    /// <summary>
    /// A Hangfire server that trains jobs in this process. <c>Workers:Concurrency</c> (default 1) caps how many jobs
    /// train at once: each uses every core through TorchSharp, so more rarely finishes sooner on a CPU.
    /// </summary>
    public static IServiceCollection AddFineTuningWorker(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddScoped<FineTuningJobRunner>();
        services.AddScoped<VitPretrainingJob>();
        services.Configure<PretrainingOptions>(configuration.GetSection("Vision:Pretraining"));
        services.AddOptions<TrainingOptions>().Bind(configuration.GetSection("Workers"))
            .Validate(o => o.Speed.Problem() is null, "Workers:Speed:MicroBatchSize must be at least 1").ValidateOnStart();
        services.AddHangfireServer(o =>
        {
            o.WorkerCount = configuration.GetValue("Workers:Concurrency", 1);
            o.Queues = [FineTuningQueue];
            o.ServerName = $"{Environment.MachineName}:{Environment.ProcessId}";
        });
        return services;
    }
}
