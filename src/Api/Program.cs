using AdapterService.Api;
using AdapterService.Api.Apis;
using AdapterService.Api.Hubs;
using AdapterService.Api.Infrastructure;

var builder = WebApplication.CreateBuilder(args);
builder.AddApplicationServices();

var app = builder.Build();
app.UseApplication();
var v1 = app.MapGroup("").RequireAuthorization(Auth.ProjectPolicy);   // a project's key (or the admin key) for every /v1 route
v1.MapFilesApi();
v1.MapFineTuningJobsApi();
v1.MapEvalsApi();
v1.MapCompletionsApi();
v1.MapChatCompletionsApi();
v1.MapTokenizeApi();
v1.MapModelsApi();
v1.MapBaseModelsApi();
v1.MapAdaptersApi();
v1.MapClassifyApi();
v1.MapWebhooksApi();
app.MapProjectsApi();
app.MapOperationsApi();
app.MapHub<JobsHub>("/hubs/jobs").RequireAuthorization(Auth.ProjectPolicy);
app.Run();

/// <summary>Entry point; public so that tests can host the app with WebApplicationFactory.</summary>
public partial class Program;
