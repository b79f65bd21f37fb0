using System.Diagnostics;
using System.Net;
using System.Net.Sockets;

namespace AdapterService.Api.Tests;

/// <summary>One run of the service's executable; disposing kills it.</summary>
public sealed class ServiceProcess : IAsyncDisposable
{
    readonly Process process;
    public HttpClient Http { get; }
    public string ReadyLine { get; private set; } = "";

    ServiceProcess(Process process, int port) =>
        (this.process, Http) = (process, new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}") });

    public static Task<ServiceProcess> StartAsync(string folder, params (string Key, string Value)[] settings) =>
        StartAsync(Path.Combine(AppContext.BaseDirectory, "AdapterService.Api.dll"), "Adapter service ready:", folder, settings);

    /// <summary>On a given port: a restarted service comes back where its clients (a browser page) left it.</summary>
    public static Task<ServiceProcess> StartAsync(string folder, int port, params (string Key, string Value)[] settings) =>
        StartAsync(Path.Combine(AppContext.BaseDirectory, "AdapterService.Api.dll"), "Adapter service ready:", folder, settings, port);

    /// <summary>A standalone training worker (src/Workers, built beside this test project by the solution build).</summary>
    public static Task<ServiceProcess> StartWorkerAsync(string folder, params (string Key, string Value)[] settings)
    {
        string workerBin = AppContext.BaseDirectory.Replace(Path.Combine("tests", "Api.Tests"), Path.Combine("src", "Workers"));
        return StartAsync(Path.Combine(workerBin, "AdapterService.Workers.dll"), "Worker ready:", folder, settings);
    }

    /// <summary>
    /// The service with its data folder on a tmpfs of <paramref name="size"/> (mount's size syntax, e.g. 64m), mounted in
    /// a mount namespace of its own (<c>unshare -m</c>, so a crash leaves no mount behind; root only). Other processes
    /// reach the folder through <see cref="DataFolder"/> (<c>/proc/PID/root/…</c>, which crosses into the namespace).
    /// </summary>
    public static Task<ServiceProcess> StartOnTmpfsAsync(string folder, string size, params (string Key, string Value)[] settings)
    {
        var data = Path.Combine(folder, "data");
        Directory.CreateDirectory(data);
        var dll = Path.Combine(AppContext.BaseDirectory, "AdapterService.Api.dll");
        return StartAsync(dll, "Adapter service ready:", folder, settings, command: ("unshare",
            ["-m", "--propagation", "private", "sh", "-c", $"mount -t tmpfs -o size={size} tmpfs '{data}' && exec dotnet '{dll}'"]));
    }

    /// <summary>The data folder as this process sees it (for a service on a tmpfs: inside its mount namespace).</summary>
    public string DataFolder(string folder) => $"/proc/{process.Id}/root{Path.Combine(folder, "data")}";

    public int ProcessId => process.Id;

    /// <summary>What the process wrote to stdout and stderr so far (for a failing test's message).</summary>
    public string Output => string.Join("\n", output);
    readonly System.Collections.Concurrent.ConcurrentQueue<string> output = new();

    static async Task<ServiceProcess> StartAsync(string dll, string readyMarker, string folder, (string Key, string Value)[] settings, int? fixedPort = null,
        (string File, string[] Arguments)? command = null)
    {
        int port = fixedPort ?? FreePort();
        var start = new ProcessStartInfo(command?.File ?? "dotnet", command?.Arguments ?? [dll])
        {
            WorkingDirectory = folder, RedirectStandardOutput = true, RedirectStandardError = true,
            // float32 bases, as ServiceFactory's: these tests hold answers given in a batch to the answers given alone, which
            // bf16 matmuls (whose kernels block by batch size) meet only to their rounding. A test may set it otherwise.
            Environment = { ["Urls"] = $"http://127.0.0.1:{port}", ["Service__DataDirectory"] = Path.Combine(folder, "data"), ["Models__Precision"] = "fp32" },
        };
        foreach (var (key, value) in settings) start.Environment[key] = value;
        var service = new ServiceProcess(Process.Start(start)!, port);
        var ready = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        var output = service.output;
        service.process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is null) return;
            output.Enqueue(e.Data);
            if (e.Data.Contains(readyMarker)) ready.TrySetResult(e.Data.Trim());
        };
        service.process.ErrorDataReceived += (_, e) => { if (e.Data is not null) output.Enqueue(e.Data); };
        service.process.BeginOutputReadLine();
        service.process.BeginErrorReadLine();
        var exited = service.process.WaitForExitAsync();
        if (await Task.WhenAny(ready.Task, exited).WaitAsync(TimeSpan.FromMinutes(2)) == exited)
            throw new InvalidOperationException($"the service exited with {service.process.ExitCode} before it was ready:\n{string.Join("\n", output)}");
        service.ReadyLine = await ready.Task;
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

    static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
