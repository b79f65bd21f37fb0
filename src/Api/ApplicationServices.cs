using System.Reflection;
using System.Text.Json;
using AdapterService.Api.Apis;
using AdapterService.Api.Hubs;
using AdapterService.Api.Infrastructure;
using AdapterService.Api.Webhooks;
using AdapterService.Core.Builtins;
using AdapterService.Core.Inference;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Torch;
using AdapterService.Workers;
using Hangfire;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.FileProviders;
using Microsoft.Extensions.Options;
using Microsoft.OpenApi;

namespace AdapterService.Api;

public static class ApplicationServices
{
    /// <summary>The embedded default: SQLite + blob folder, Hangfire in memory with an in-process worker, one inference engine.</summary>
    public static void AddApplicationServices(this WebApplicationBuilder builder)
    {
        Auth.RequireLoopbackWithoutKeys(builder.Configuration);
        builder.RefuseOpenListenersWithoutKeys();
        TorchRuntime.EnsureReady();
        builder.Logging.AddFilter("Microsoft.EntityFrameworkCore.Database.Command", LogLevel.Warning);   // the relay queries ten times a second
        var services = builder.Services;
        services.ConfigureHttpJsonOptions(o => o.SerializerOptions.PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower);
        services.Configure<Microsoft.AspNetCore.Mvc.JsonOptions>(o => o.JsonSerializerOptions.PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower);
        services.Configure<RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);   // so that binding errors get the OpenAI error object
        services.AddProblemDetails();
        services.Configure<FileLimits>(builder.Configuration.GetSection("Files"));
        services.Configure<FineTuningLimits>(builder.Configuration.GetSection("FineTuning"));
        services.Configure<QuotaOptions>(builder.Configuration.GetSection("Quotas"));   // storage per project; the workers read them too
        services.Configure<ExportOptions>(builder.Configuration.GetSection("Exports"));
        services.AddSingleton<ExportSlots>();
        services.Configure<RetentionOptions>(builder.Configuration.GetSection("Retention"));
        services.AddHostedService<RetentionService>();
        var maxUpload = builder.Configuration.GetValue("Files:MaxUploadBytes", new FileLimits().MaxUploadBytes);
        services.Configure<Microsoft.AspNetCore.Http.Features.FormOptions>(o => o.MultipartBodyLengthLimit = maxUpload);
        services.AddEndpointsApiExplorer();
        services.AddSwaggerGen(o =>
        {
            o.SwaggerDoc("v1", new() { Title = "Adapter fine-tuning service", Version = "v1",
                Description = "OpenAI-compatible fine-tuning, files, models and completions, with per-request adapters. Live job progress: SignalR hub /hubs/jobs." });
            o.IncludeXmlComments(Path.Combine(AppContext.BaseDirectory, $"{Assembly.GetExecutingAssembly().GetName().Name}.xml"));
            // Swagger UI's "Authorize" button: with auth on, the key it sends as Authorization: Bearer.
            o.AddSecurityDefinition("bearer", new OpenApiSecurityScheme
                { Type = SecuritySchemeType.Http, Scheme = "bearer", Description = "An API key (needed once Auth:AdminKey is set)." });
            o.AddSecurityRequirement(document => new OpenApiSecurityRequirement { [new OpenApiSecuritySchemeReference("bearer", document)] = [] });
            o.AddDocumentFilters();   // tag descriptions, the 401/429 every protected route can answer
        });
        services.AddApiKeyAuth(builder.Configuration);
        services.AddBrowserGuard(builder.Configuration);
        builder.AddLimits();
        builder.AddTelemetry();
        services.AddSignalR();
        services.AddHostedService<JobEventRelay>();
        services.AddWebhooks(builder.Configuration);
        services.AddSingleton<EvalRunSignal>().AddHostedService<EvalRunService>();   // eval runs, through this process's engine
        services.AddSingleton<HubKeys>().AddHostedService(sp => sp.GetRequiredService<HubKeys>());
        var inference = builder.Configuration.GetSection("Inference").Get<InferenceOptions>() ?? new InferenceOptions();
        services.AddBasePrecision(builder.Configuration);   // Models:Precision, shared with the trainer
        services.AddSingleton(sp => new InferenceEngine(inference, sp.GetRequiredService<BasePrecision>(), new ProjectShares(inference)));
        services.AddSingleton(sp => new ImageClassifier(precision: sp.GetRequiredService<BasePrecision>()));
        services.AddServiceStorage(builder.Configuration).AddJobQueue(builder.Configuration);
        // Service:Role "all" (default) trains in this process too; "api" leaves training to standalone workers.
        if (builder.Configuration["Service:Role"] is null or "all") services.AddFineTuningWorker(builder.Configuration);
        // Let a training step finish and the worker stop cleanly before the host gives up.
        services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(30));
    }

    public static void UseApplication(this WebApplication app)
    {
        using (var scope = app.Services.CreateScope())
        {
            var db = scope.ServiceProvider.GetRequiredService<ServiceDbContext>();
            ServiceStorage.Initialize(db);
            Telemetry.SeedJobGauge(app, scope.ServiceProvider.GetRequiredService<JobLifecycle>());   // before this process moves any job
            BuiltinModels.Register(db, scope.ServiceProvider.GetRequiredService<IBlobStore>());
            // With in-memory Hangfire the queue died with the last process; a persistent queue still holds its jobs.
            if (ServiceStorage.Provider(app.Configuration) == "sqlite")
                scope.ServiceProvider.GetRequiredService<JobLifecycle>().RequeueUnfinished();
        }
        app.UseOpenAiErrors();
        app.UseBrowserGuard();
        app.UseAuthentication();
        app.Use(ScopeToProject);
        app.UseRateLimiter();
        app.UseAuthorization();
        app.UseSwagger(o => o.PreSerializeFilters.Add(OpenApiDocumentFilters.ServerFromRequest));
        app.UseSwaggerUI(o => o.DocumentTitle = "Adapter fine-tuning service");
        var auth = app.Services.GetRequiredService<IOptions<AuthOptions>>().Value;
        app.UseHangfireDashboard("/hangfire", new DashboardOptions { Authorization = [new HangfireDashboardAuthorization(auth)] });
        UseDashboard(app);
        app.Lifetime.ApplicationStarted.Register(() =>
        {
            var bound = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()?.Addresses ?? [];
            if (Auth.OpenListeners(bound, auth) is { Count: > 0 } open)
            {
                app.Logger.LogCritical("{Message}", Auth.OpenListenersMessage(open));
                Environment.ExitCode = 1;
                app.Lifetime.StopApplication();
                return;
            }
            if (!auth.Enabled)
                app.Logger.LogWarning("Auth is off (no Auth:AdminKey): every request acts in the default project, and the service listens on loopback addresses only");
            app.Logger.LogInformation("Base models compute in {Precision} (Models:Precision)", app.Services.GetRequiredService<BasePrecision>());
            foreach (var url in app.Urls) app.Logger.LogInformation("Adapter service ready: {Url}/ (dashboard), {Url}/swagger (API)", url, url);
        });
    }

    /// <summary>
    /// The caller's project scopes the request's database context (another project's rows are invisible to it) and
    /// its log messages.
    /// </summary>
    static async Task ScopeToProject(HttpContext context, RequestDelegate next)
    {
        if (context.User.ProjectId() is not { } project)
        {
            await next(context);
            return;
        }
        context.RequestServices.GetRequiredService<ServiceDbContext>().ProjectScope = project;
        var log = context.RequestServices.GetRequiredService<ILogger<Program>>();
        using (log.BeginScope(new Dictionary<string, object> { ["ProjectId"] = project })) await next(context);
    }

    /// <summary>
    /// The web dashboard at <c>/</c>: wwwroot of the content root (<c>dotnet run</c>), else the copy the build puts next to
    /// the executable (started from any other folder). Served with <c>no-cache</c> so a rebuilt bundle is never stale.
    /// </summary>
    static void UseDashboard(WebApplication app)
    {
        var root = new[] { app.Environment.WebRootPath, Path.Combine(AppContext.BaseDirectory, "wwwroot") }
            .FirstOrDefault(folder => !string.IsNullOrEmpty(folder) && File.Exists(Path.Combine(folder, "index.html")));
        if (root is null)
        {
            app.Logger.LogWarning("The dashboard's wwwroot was not found; / will answer 404");
            return;
        }
        var files = new PhysicalFileProvider(root);
        app.UseDefaultFiles(new DefaultFilesOptions { FileProvider = files });
        app.UseStaticFiles(new StaticFileOptions
        {
            FileProvider = files,
            OnPrepareResponse = context => context.Context.Response.Headers.CacheControl = "no-cache",
        });
    }
}
