using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Http.Json;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.SignalR.Client;

namespace AdapterService.Api.Tests;

/// <summary>Start-up refusal, rate limits and back-pressure, on the real executable over loopback.</summary>
public sealed class LimitsProcessTests
{
    const string AdminKey = "process-admin-key-0123456789";

    [Fact]
    public async Task WithoutKeysTheServiceRefusesToListenBeyondLoopback()
    {
        using var folder = new TempFolder("adapter-service-open-");
        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() =>
            ServiceProcess.StartAsync(folder.FullName, ("Urls", "http://0.0.0.0:0")));
        Assert.Contains("Refusing to listen on http://0.0.0.0:0 without API keys", refused.Message);

        // With an admin key it listens on every address, and the key is needed.
        using var secured = new TempFolder("adapter-service-open-");
        int port = FreePort();
        await using var service = await ServiceProcess.StartAsync(secured.FullName, port, ("Urls", $"http://0.0.0.0:{port}"), ("Auth__AdminKey", AdminKey));
        Assert.Equal(HttpStatusCode.Unauthorized, (await service.Http.GetAsync("/v1/models")).StatusCode);
        service.Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", AdminKey);
        Assert.Equal(HttpStatusCode.OK, (await service.Http.GetAsync("/v1/models")).StatusCode);

        // Browsers' WebSockets send no headers: the hub takes the key from access_token, as SignalR clients send it.
        HubConnection Hub(string key) => new HubConnectionBuilder()
            .WithUrl(new Uri(service.Http.BaseAddress!, "hubs/jobs"), o =>
            {
                o.Transports = HttpTransportType.WebSockets;
                o.SkipNegotiation = true;
                o.AccessTokenProvider = () => Task.FromResult<string?>(key);
            })
            .Build();
        await using (var hub = Hub(AdminKey)) await hub.StartAsync();
        await using (var hub = Hub("wrong")) await Assert.ThrowsAnyAsync<Exception>(() => hub.StartAsync());
    }

    /// <summary>
    /// Microsoft's container images set ASPNETCORE_HTTP_PORTS; with Urls empty Kestrel then listens on every interface,
    /// which no configured URL shows. The addresses actually bound are checked after start and the service stops.
    /// </summary>
    [Fact]
    public async Task WithoutKeysAListenerOnEveryInterfaceFromHttpPortsStopsTheService()
    {
        using var folder = new TempFolder("adapter-service-ports-");
        int port = FreePort();
        var refused = await Assert.ThrowsAsync<InvalidOperationException>(() =>
            ServiceProcess.StartAsync(folder.FullName, port, ("Urls", ""), ("ASPNETCORE_HTTP_PORTS", port.ToString())));
        Assert.Contains("exited with 1", refused.Message);
        Assert.Contains($"Refusing to serve: the server listens on http://[::]:{port} without API keys", refused.Message);
    }

    [Fact]
    public async Task EachProjectHasItsOwnRequestRateLimit()
    {
        using var folder = new TempFolder("adapter-service-rate-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName, ("Auth__AdminKey", AdminKey), ("Limits__RequestsPerMinute", "20"));
        var admin = Client(service, AdminKey);
        async Task<HttpClient> ProjectClient(string name)
        {
            var project = await Api.JsonAsync(await admin.PostAsJsonAsync("/v1/organization/projects", new { name }));
            var key = await Api.JsonAsync(await admin.PostAsJsonAsync($"/v1/organization/projects/{(string)project["id"]!}/api_keys", new { }));
            return Client(service, (string)key["value"]!);
        }
        HttpClient a = await ProjectClient("a"), b = await ProjectClient("b");

        var answers = new List<HttpResponseMessage>();
        for (int i = 0; i < 25; i++) answers.Add(await a.GetAsync("/v1/models"));
        Assert.Equal(20, answers.Count(r => r.StatusCode == HttpStatusCode.OK));
        foreach (var limited in answers.Where(r => r.StatusCode != HttpStatusCode.OK))
        {
            Assert.Equal("rate_limit_exceeded", (string?)(await Api.AssertErrorAsync(limited, 429))["code"]);
            Assert.InRange(limited.Headers.RetryAfter!.Delta!.Value.TotalSeconds, 1, 60);
        }
        Assert.Equal(HttpStatusCode.OK, (await b.GetAsync("/v1/models")).StatusCode);   // another project is not slowed down
        Assert.Equal(HttpStatusCode.OK, (await a.GetAsync("/healthz")).StatusCode);      // probes are not limited
    }

    /// <summary>
    /// 4x the engine's capacity (running + waiting places) at once, in waves: the excess gets 429 with Retry-After,
    /// every accepted request answers exactly what it answers alone, and memory stays flat across the waves.
    /// </summary>
    [Fact]
    public async Task OverloadAnswers429AndServesEveryAcceptedRequestCorrectly()
    {
        const int maxBatch = 2, maxQueued = 2, concurrent = 4 * (maxBatch + maxQueued), waves = 8;
        using var folder = new TempFolder("adapter-service-load-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName,
            ("Inference__MaxBatch", maxBatch.ToString()), ("Inference__MaxQueued", maxQueued.ToString()));
        string[] prompts = ["Once upon a time", "The sea", "A small cat", "In the morning"];
        var expected = new Dictionary<string, string>();
        foreach (var prompt in prompts) expected[prompt] = (await CompleteAsync(service.Http, prompt)).Text!;   // alone, one at a time

        // One batch request may ask for half the engine's places at most: it cannot fill the queue by itself.
        object Input(string prompt) => new { model = "tiny-llama-demo", prompt, max_tokens = 4, temperature = 0 };
        var tooMany = await service.Http.PostAsJsonAsync("/v1/completions/batch", new { inputs = prompts.Take(3).Select(Input) });
        Assert.Contains("up to 2", (string)(await Api.AssertErrorAsync(tooMany, 400, "inputs"))["message"]!);
        var half = await service.Http.PostAsJsonAsync("/v1/completions/batch", new { inputs = prompts.Take(2).Select(Input) });
        Assert.Equal(HttpStatusCode.OK, half.StatusCode);

        using var process = Process.GetProcessById(service.ProcessId);
        long baseline = 0, peak = 0;
        int ok = 0, busy = 0;
        var clock = Stopwatch.StartNew();
        for (int wave = 0; wave < waves; wave++)
        {
            var results = await Task.WhenAll(Enumerable.Range(0, concurrent).Select(i => CompleteAsync(service.Http, prompts[i % prompts.Length])));
            foreach (var (status, text, retryAfter, prompt) in results)
            {
                if (status == HttpStatusCode.OK)
                {
                    ok++;
                    Assert.Equal(expected[prompt], text);
                }
                else
                {
                    Assert.Equal(HttpStatusCode.TooManyRequests, status);
                    Assert.NotNull(retryAfter);
                    busy++;
                }
            }
            process.Refresh();
            if (wave == 1) baseline = process.WorkingSet64;
            peak = Math.Max(peak, process.WorkingSet64);
        }
        Assert.True(busy > 0, "no request was refused at 4x capacity");
        Assert.True(ok >= waves * (maxBatch + maxQueued) / 2, $"only {ok} requests were served");
        Assert.True(peak - baseline < 200L << 20, $"memory grew from {baseline >> 20} MiB to {peak >> 20} MiB over the waves");
        Assert.True(clock.Elapsed < TimeSpan.FromMinutes(2), $"the waves took {clock.Elapsed}");
        var metrics = await service.Http.GetStringAsync("/metrics");
        Assert.Contains("adapter_service_inference_queued_requests", metrics);
        Assert.Equal(0, Metrics.Value(metrics, "adapter_service_inference_queued_requests"));   // every place was given back
    }

    static async Task<(HttpStatusCode Status, string? Text, TimeSpan? RetryAfter, string Prompt)> CompleteAsync(HttpClient client, string prompt)
    {
        var response = await client.PostAsJsonAsync("/v1/completions", new { model = "tiny-llama-demo", prompt, max_tokens = 48, temperature = 0 });
        if (response.StatusCode != HttpStatusCode.OK)
        {
            await Api.AssertErrorAsync(response, 429);
            return (response.StatusCode, null, response.Headers.RetryAfter?.Delta, prompt);
        }
        var body = await Api.JsonAsync(response);
        return (response.StatusCode, (string)body["choices"]![0]!["text"]!, null, prompt);
    }

    static HttpClient Client(ServiceProcess service, string key) =>
        new() { BaseAddress = service.Http.BaseAddress, DefaultRequestHeaders = { Authorization = new AuthenticationHeaderValue("Bearer", key) } };

    static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }
}
