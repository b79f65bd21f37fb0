using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary>The service as a user starts it: a real process on a loopback port, over an empty data folder.</summary>
public sealed class ProcessTests
{
    [Fact]
    public async Task AFreshProcessServesSwaggerAndTheBuiltInModel()
    {
        var data = Directory.CreateTempSubdirectory("adapter-service-process-");
        int port = FreePort();
        var start = new ProcessStartInfo("dotnet", [Path.Combine(AppContext.BaseDirectory, "AdapterService.Api.dll")])
        {
            WorkingDirectory = data.FullName, RedirectStandardOutput = true, RedirectStandardError = true,
            Environment = { ["Urls"] = $"http://127.0.0.1:{port}", ["Service__DataDirectory"] = Path.Combine(data.FullName, "data") },
        };
        using var process = Process.Start(start)!;
        var ready = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        process.OutputDataReceived += (_, e) => { if (e.Data?.Contains("Adapter service ready:") == true) ready.TrySetResult(e.Data.Trim()); };
        process.BeginOutputReadLine();
        process.BeginErrorReadLine();
        try
        {
            var line = await ready.Task.WaitAsync(TimeSpan.FromMinutes(2));
            Assert.Contains($"http://127.0.0.1:{port}/swagger", line);
            using var http = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") };
            Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/swagger/index.html")).StatusCode);
            var models = JsonNode.Parse(await http.GetStringAsync("/v1/models"))!;
            Assert.Contains(models["data"]!.AsArray(), m => (string?)m!["id"] == "tiny-llama-demo");
            Assert.True(File.Exists(Path.Combine(data.FullName, "data", "service.db")));
            Assert.True(File.Exists(Path.Combine(data.FullName, "data", "blobs", "models", "tiny-llama-demo", "config.json")));
        }
        finally
        {
            process.Kill(entireProcessTree: true);
            await process.WaitForExitAsync();
            data.Delete(recursive: true);
        }
    }

    static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
