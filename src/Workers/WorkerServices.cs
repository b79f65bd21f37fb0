using AdapterService.Core.Inference;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Pretraining;
using AdapterService.Core.Storage;
using AdapterService.Core.Telemetry;
using AdapterService.Core.Training;
using Hangfire;
using Hangfire.PostgreSql;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using OpenTelemetry;
using OpenTelemetry.Metrics;
using OpenTelemetry.Resources;
using OpenTelemetry.Trace;

namespace AdapterService.Workers;

public static class WorkerServices
{
    public const string FineTuningQueue = "fine-tuning";

    /// <summary>This process's name as the owner of the leases it takes.</summary>
    public static readonly string WorkerId = $"{Environment.MachineName}:{Environment.ProcessId}:{Guid.NewGuid():N}";

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
        services.AddSingleton<IJobQueue, HangfireJobQueue>();
        services.AddScoped<JobLifecycle>();
        return services.AddPretrainedBuiltins(configuration);
    }

    /// <summary>
    /// The base models the service pre-trains itself, with their settings (<c>Vision:Pretraining</c>,
    /// <c>Text:Pretraining</c>): the API checks their data and queues them, a worker trains them.
    /// </summary>
    public static IServiceCollection AddPretrainedBuiltins(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddSingleton<IPretrainedBuiltin>(_ => new FashionMnistVit(configuration.GetSection("Vision:Pretraining").Get<PretrainingOptions>() ?? new()));
        services.AddSingleton<IPretrainedBuiltin>(_ => new FortunesLlama(configuration.GetSection("Text:Pretraining").Get<LanguageModelPretrainingOptions>() ?? new()));
        return services;
    }

    /// <summary>The key that replaced <see cref="RetiredBf16Key"/>.</summary>
    public const string PrecisionKey = "Models:Precision", RetiredBf16Key = "Workers:Speed:Bf16";

    /// <summary>
    /// The frozen bases' precision, <c>Models:Precision</c> (auto | bf16 | fp32, default auto), resolved once for the process:
    /// the trainer and the serving engine both load bases with it. The retired <c>Workers:Speed:Bf16</c> (a bf16 copy for
    /// training only) is refused with the key to use instead, so an old configuration cannot silently change meaning.
    /// </summary>
    public static IServiceCollection AddBasePrecision(this IServiceCollection services, IConfiguration configuration)
    {
        if (configuration[RetiredBf16Key] is { } old)
            throw new InvalidOperationException(
                $"{RetiredBf16Key} ({old}) is retired: set {PrecisionKey} to bf16, fp32 or auto instead (it now covers training and serving alike; docs/API.md)");
        string? setting = configuration[PrecisionKey];
        BasePrecision precision;
        try { precision = BasePrecision.Resolve(setting); }
        catch (ArgumentException e) { throw new InvalidOperationException(e.Message, e); }
        services.TryAddSingleton(precision);
        return services;
    }

    /// <summary>
    /// A Hangfire server that trains jobs in this process. <c>Workers:Concurrency</c> (default 1) caps how many trainings
    /// run at once: each uses every core through TorchSharp, so more rarely finishes sooner on a CPU. Language-model jobs
    /// on the same base fuse: up to <c>Workers:MaxFusedJobs</c> (default 4; 1 turns fusion off) train as one training over
    /// one copy of the base (<see cref="FusionHost"/>), so the server runs Concurrency × MaxFusedJobs Hangfire workers,
    /// the ones beyond a free slot waiting for a group to join or a slot to free.
    /// </summary>
    public static IServiceCollection AddFineTuningWorker(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddBasePrecision(configuration);
        // Reinforcement jobs sample through an inference engine: the API's in the same process, else this worker's own.
        var inference = configuration.GetSection("Inference").Get<InferenceOptions>() ?? new InferenceOptions();
        services.TryAddSingleton(sp => new InferenceEngine(inference, sp.GetRequiredService<BasePrecision>(), new ProjectShares(inference)));
        int concurrency = Math.Max(1, configuration.GetValue("Workers:Concurrency", 1));
        int maxFused = Math.Max(1, configuration.GetValue("Workers:MaxFusedJobs", 4));
        double checkpointShare = configuration.GetValue("Workers:FusedCheckpointing", FusedTrainer.DefaultCheckpointShare);
        services.AddSingleton(new FusionHost(maxFused, concurrency, checkpointShare));
        services.AddScoped<FineTuningJobRunner>();
        services.Configure<QuotaOptions>(configuration.GetSection("Quotas"));   // a checkpoint over the project's quota is not kept
        services.AddScoped<PretrainingJobRunner>();
        services.AddOptions<TrainingOptions>().Bind(configuration.GetSection("Workers"))
            .Validate(o => o.Speed.Problem() is null, "Workers:Speed:MicroBatchSize must be at least 1").ValidateOnStart();
        services.AddHangfireServer(o =>
        {
            o.WorkerCount = concurrency * maxFused;
            o.Queues = [FineTuningQueue];
            o.ServerName = $"{Environment.MachineName}:{Environment.ProcessId}";
        });
        return services;
    }

    /// <summary>The .NET runtime's and EF Core's built-in meters, read by every host.</summary>
    static readonly string[] FrameworkMeters = ["System.Runtime", "Microsoft.EntityFrameworkCore", "System.Net.Http"];

    /// <summary>
    /// OpenTelemetry for every host of the service (the API and the standalone worker): the service's own meter and
    /// activity source (<see cref="ServiceTelemetry"/>) and the framework's meters, exported over OTLP when
    /// <c>OTEL_EXPORTER_OTLP_ENDPOINT</c> is set (the standard variable). The API adds its HTTP instrumentation and the
    /// Prometheus endpoint on top of this one pipeline.
    /// </summary>
    public static OpenTelemetryBuilder AddServiceTelemetry(this IServiceCollection services, IConfiguration configuration, string serviceName)
    {
        var telemetry = services.AddOpenTelemetry()
            .ConfigureResource(r => r.AddService(serviceName, serviceInstanceId: WorkerServices.WorkerId))
            .WithMetrics(m => m.AddMeter(ServiceTelemetry.Name).AddMeter(FrameworkMeters))
            .WithTracing(t => t.AddSource(ServiceTelemetry.Name));
        if (!string.IsNullOrWhiteSpace(configuration["OTEL_EXPORTER_OTLP_ENDPOINT"])) telemetry.UseOtlpExporter();
        return telemetry;
    }

    /// <summary>
    /// Builds the meter and tracer providers now, before the host starts: a measurement made while no provider listens is
    /// lost, and the job gauge's seed and the first transitions (re-queued jobs, early claims) come before the hosted services.
    /// </summary>
    public static void StartTelemetry(IServiceProvider services)
    {
        services.GetService<MeterProvider>();
        services.GetService<TracerProvider>();
    }
}
