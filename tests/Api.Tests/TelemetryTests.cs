using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net.Http.Json;

namespace AdapterService.Api.Tests;

/// <summary>
/// Traces: a fine-tuning job's run in the worker is a span of the trace of the request that created it, ending with the
/// job's outcome; a completion request's span through the engine is a child of its HTTP request and marks its first token.
/// </summary>
[Collection(ServiceCollection.Name)]
public sealed class TelemetryTests : IDisposable
{
    readonly HttpClient client;
    readonly ConcurrentBag<Activity> finished = [];
    readonly ActivityListener listener = new()
    {
        ShouldListenTo = source => source.Name is "AdapterService" or "Microsoft.AspNetCore",
        Sample = (ref ActivityCreationOptions<ActivityContext> _) => ActivitySamplingResult.AllDataAndRecorded,
    };

    public TelemetryTests(ServiceFactory factory)
    {
        client = factory.CreateClient();
        listener.ActivityStopped = finished.Add;
        ActivitySource.AddActivityListener(listener);
    }

    public void Dispose() => listener.Dispose();

    /// <summary>The first finished span that <paramref name="match"/>es; spans end a moment after the client has its response.</summary>
    async Task<Activity> Finished(Func<Activity, bool> match)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (true)
        {
            if (finished.FirstOrDefault(match) is { } found) return found;
            Assert.True(DateTime.UtcNow < deadline, "no such span");
            await Task.Delay(20);
        }
    }

    Task<Activity> Request(string method, string path, Func<Activity, bool>? also = null) => Finished(a => a.Kind == ActivityKind.Server
        && a.GetTagItem("http.request.method") as string == method && a.GetTagItem("url.path") as string == path && (also?.Invoke(a) ?? true));

    [Fact]
    public async Task AJobsRunInTheWorkerContinuesTheTraceOfTheRequestThatCreatedIt()
    {
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Trace me?", "Traced."), 10));
        var job = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 1 } });
        string jobId = (string)job["id"]!;
        Api.AssertSucceeded(await Api.WaitForFinishAsync(client, jobId));

        var run = await Finished(a => a.OperationName == "fine_tuning.job.run" && a.GetTagItem("job.id") as string == jobId);
        var created = await Request("POST", "/v1/fine_tuning/jobs", a => a.TraceId == run.TraceId);
        Assert.Equal(created.TraceId, run.TraceId);
        Assert.Equal(created.SpanId, run.ParentSpanId);
        Assert.Equal("succeeded", run.GetTagItem("job.status"));
        Assert.Contains(run.Events, e => e.Name == "fine_tuning.job.succeeded");
    }

    [Fact]
    public async Task ACompletionsSpanThroughTheEngineIsAChildOfItsRequest()
    {
        var response = await client.PostAsJsonAsync("/v1/chat/completions", new
        {
            model = "tiny-llama-demo", temperature = 0, max_tokens = 3, messages = new[] { new { role = "user", content = "Span?" } },
        });
        response.EnsureSuccessStatusCode();
        // Other tests complete too: some engine span must be the child of a chat completion request, in its trace.
        bool IsChat(Activity a) => a.Kind == ActivityKind.Server && a.GetTagItem("url.path") as string == "/v1/chat/completions";
        var generate = await Finished(a => a.OperationName == "inference.generate" && finished.Any(r => IsChat(r) && r.SpanId == a.ParentSpanId));
        var request = finished.First(r => IsChat(r) && r.SpanId == generate.ParentSpanId);
        Assert.Equal(request.TraceId, generate.TraceId);
        Assert.Equal(["first_token", "finished"], generate.Events.Select(e => e.Name));
    }
}
