using AdapterService.Core.Builtins;
using AdapterService.Core.Storage;
using AdapterService.Core.Torch;
using AdapterService.Workers;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

// A standalone training worker for scale-out: it shares PostgreSQL (rows and Hangfire's queue) and the blob folder
// with the API processes, trains the jobs it fetches, and writes their progress as events that every API relays.
var builder = Host.CreateApplicationBuilder(args);
if (ServiceStorage.Provider(builder.Configuration) != "postgres")
{
    Console.Error.WriteLine("The standalone worker needs the scale-out configuration: Database__Provider=postgres, " +
        "ConnectionStrings__Database=<PostgreSQL> and Service__DataDirectory=<the shared blob volume>. " +
        "With the embedded default, the API trains jobs in-process (dotnet run --project src/Api).");
    return 2;
}
TorchRuntime.EnsureReady();
builder.Logging.AddFilter("Microsoft.EntityFrameworkCore.Database.Command", LogLevel.Warning);
builder.Services.AddServiceStorage(builder.Configuration).AddJobQueue(builder.Configuration).AddFineTuningWorker(builder.Configuration);
builder.Services.AddServiceTelemetry(builder.Configuration, "adapter-service-worker");   // OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set
// On SIGTERM the runner saves the job's state after its current step; give it time before the host gives up.
builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(60));
var host = builder.Build();
WorkerServices.StartTelemetry(host.Services);   // listening before the first claim
using (var scope = host.Services.CreateScope())
{
    var db = scope.ServiceProvider.GetRequiredService<ServiceDbContext>();
    ServiceStorage.Initialize(db);
    BuiltinModels.Register(db, scope.ServiceProvider.GetRequiredService<IBlobStore>());
}
host.Services.GetRequiredService<ILogger<Program>>().LogInformation("Worker ready: {Name}", $"{Environment.MachineName}:{Environment.ProcessId}");
host.Run();
return 0;
