using AdapterService.Api;
using AdapterService.Api.Apis;
using AdapterService.Api.Hubs;

var builder = WebApplication.CreateBuilder(args);
builder.AddApplicationServices();

var app = builder.Build();
app.UseApplication();
app.MapFilesApi();
app.MapFineTuningJobsApi();
app.MapCompletionsApi();
app.MapChatCompletionsApi();
app.MapModelsApi();
app.MapAdaptersApi();
app.MapOperationsApi();
app.MapClassifyApi();
app.MapHub<JobsHub>("/hubs/jobs");
app.Run();

/// <summary>Entry point; public so that tests can host the app with WebApplicationFactory.</summary>
public partial class Program;
