using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary>The service as a user starts it: a real process on a loopback port, over its data folder.</summary>
public sealed class ProcessTests
{
    /// <summary>One run of the service's executable; disposing kills it.</summary>
    sealed class ServiceProcess : IAsyncDisposable
    {
        readonly Process process;
        public HttpClient Http { get; }
        public string ReadyLine { get; private set; } = "";

        ServiceProcess(Process process, int port) =>
            (this.process, Http) = (process, new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") });

        public static async Task<ServiceProcess> StartAsync(string folder, params (string Key, string Value)[] settings)
        {
            int port = FreePort();
            var start = new ProcessStartInfo("dotnet", [Path.Combine(AppContext.BaseDirectory, "AdapterService.Api.dll")])
            {
                WorkingDirectory = folder, RedirectStandardOutput = true, RedirectStandardError = true,
                Environment = { ["Urls"] = $"http://127.0.0.1:{port}", ["Service__DataDirectory"] = Path.Combine(folder, "data") },
            };
            foreach (var (key, value) in settings) start.Environment[key] = value;
            var service = new ServiceProcess(Process.Start(start)!, port);
            var ready = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
            service.process.OutputDataReceived += (_, e) => { if (e.Data?.Contains("Adapter service ready:") == true) ready.TrySetResult(e.Data.Trim()); };
            service.process.BeginOutputReadLine();
            service.process.BeginErrorReadLine();
            service.ReadyLine = await ready.Task.WaitAsync(TimeSpan.FromMinutes(2));
            return service;
        }

        /// <summary>SIGKILL: no shutdown code runs, as in a crash or an out-of-memory kill.</summary>
        public async Task KillAsync()
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
        }

        public async ValueTask DisposeAsync()
        {
            if (!process.HasExited) await KillAsync();
            process.Dispose();
            Http.Dispose();
        }
    }

    [Fact]
    public async Task AFreshProcessServesSwaggerAndTheBuiltInModel()
    {
        var folder = Directory.CreateTempSubdirectory("adapter-service-process-");
        try
        {
            await using var service = await ServiceProcess.StartAsync(folder.FullName);
            Assert.Contains($"{service.Http.BaseAddress!.ToString().TrimEnd('/')}/swagger", service.ReadyLine);
            Assert.Equal(HttpStatusCode.OK, (await service.Http.GetAsync("/swagger/index.html")).StatusCode);
            var models = JsonNode.Parse(await service.Http.GetStringAsync("/v1/models"))!;
            Assert.Contains(models["data"]!.AsArray(), m => (string?)m!["id"] == "tiny-llama-demo");
            Assert.True(File.Exists(Path.Combine(folder.FullName, "data", "service.db")));
            Assert.True(File.Exists(Path.Combine(folder.FullName, "data", "blobs", "models", "tiny-llama-demo", "config.json")));
        }
        finally
        {
            folder.Delete(recursive: true);
        }
    }

    [Fact]
    public async Task AJobKilledMidTrainingFinishesFromItsLastStateAfterARestart()
    {
        var folder = Directory.CreateTempSubdirectory("adapter-service-crash-");
        (string, string) stateEvery = ("Workers__StateEverySteps", "10");
        try
        {
            string jobId;
            int beforeKill;
            await using (var first = await ServiceProcess.StartAsync(folder.FullName, stateEvery))
            {
                var fileId = await Api.UploadFileAsync(first.Http, Enumerable.Repeat(Api.ChatLine("Where is the Eiffel Tower?", "In Paris."), 6));
                var job = await Api.CreateJobAsync(first.Http, new
                {
                    model = "tiny-llama-demo", training_file = fileId, seed = 8, hyperparameters = new { n_epochs = 50, batch_size = 1 },
                });
                jobId = (string)job["id"]!;
                var deadline = DateTime.UtcNow.AddMinutes(2);
                do
                {
                    await Task.Delay(50);
                    beforeKill = MetricSteps(await Events(first.Http, jobId)).Count;
                } while (beforeKill < 35 && DateTime.UtcNow < deadline);
                await first.KillAsync();
            }
            Assert.InRange(beforeKill, 35, 299);

            await using var second = await ServiceProcess.StartAsync(folder.FullName, stateEvery);
            var done = await Api.WaitForFinishAsync(second.Http, jobId);
            Assert.Equal("succeeded", (string?)done["status"]);

            var events = await Events(second.Http, jobId);
            Assert.Equal(Enumerable.Range(1, 300), MetricSteps(events));   // every step reported exactly once, none lost
            var resumed = events.Select(e => (string)e!["message"]!).Single(m => m.StartsWith("Fine-tuning job resumed from step", StringComparison.Ordinal));
            int from = int.Parse(resumed.Split(' ')[^1]);
            Assert.InRange(from, 30, beforeKill);   // from the newest saved state, not from the start
            Assert.Equal("In Paris.", await Api.ChatAsync(second.Http, (string)done["fine_tuned_model"]!, "Where is the Eiffel Tower?"));
        }
        finally
        {
            folder.Delete(recursive: true);
        }
    }

    static async Task<JsonArray> Events(HttpClient http, string jobId) =>
        (await Api.JsonAsync(await http.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=1000")))["data"]!.AsArray();

    static List<int> MetricSteps(JsonArray events) =>
        events.Where(e => (string?)e!["type"] == "metrics").Select(e => (int)e!["data"]!["step"]!).Reverse().ToList();

    static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
