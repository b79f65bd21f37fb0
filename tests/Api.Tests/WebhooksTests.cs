using System.Collections.Concurrent;
using System.Diagnostics;
using System.Net;
using System.Net.Http.Json;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using AdapterService.Api.Webhooks;
using AdapterService.Core.Storage;

namespace AdapterService.Api.Tests;

/// <summary>
/// Webhooks against a real service process: a local receiver (loopback, which the test's settings allow) gets
/// <c>fine_tuning.job.succeeded</c> for a tiny job, signed so that the official <c>openai</c> npm client's
/// <c>webhooks.unwrap</c> and the Standard Webhooks algorithm written here both verify it, even when the process that
/// wrote the event was killed before sending it; a failing receiver is retried with back-off and the delivery log shows
/// the attempts; a receiver that never answers 2xx is given up.
/// </summary>
public sealed class WebhooksProcessTests
{
    static readonly string ClientDir = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "openai-client"));

    [Fact]
    public async Task AFinishedJobIsDeliveredSignedRetriedAndLogged()
    {
        using var folder = new TempFolder("adapter-service-webhooks-");
        await using var receiver = new Receiver();
        receiver.FailFirst("/flaky", 2);
        receiver.FailFirst("/down", int.MaxValue);
        (string, string)[] settings =
            [("Webhooks__AllowHttp", "true"), ("Webhooks__AllowedNetworks__0", "127.0.0.0/8"), ("Webhooks__FirstRetrySeconds", "0.3"), ("Webhooks__MaxAttempts", "3")];
        // The first process sends nothing (its sender's first look is an hour away): the outbox must outlive it.
        await using var first = await ServiceProcess.StartAsync(folder.FullName, [.. settings, ("Webhooks__PollSeconds", "3600")]);
        var http = first.Http;

        var ok = await CreateAsync(http, new { url = receiver.Url("/ok"), events = new[] { WebhookEvents.FineTuningJobSucceeded }, description = "ci" });
        var flaky = await CreateAsync(http, new { url = receiver.Url("/flaky") });   // every event type
        var down = await CreateAsync(http, new { url = receiver.Url("/down"), events = new[] { WebhookEvents.FineTuningJobSucceeded } });
        var other = await CreateAsync(http, new { url = receiver.Url("/never"), events = new[] { WebhookEvents.FineTuningJobCancelled } });
        string secret = (string)ok["secret"]!;
        Assert.StartsWith("whsec_", secret);
        Assert.Equal(32, Convert.FromBase64String(secret["whsec_".Length..]).Length);
        Assert.Equal(WebhookEvents.All.Order(StringComparer.Ordinal), flaky["events"]!.AsArray().Select(e => (string)e!));
        // The secret is shown once: neither the list nor the endpoint show it again.
        var listed = (await Api.JsonAsync(await http.GetAsync("/v1/webhooks")))["data"]!.AsArray();
        Assert.Equal(4, listed.Count);
        Assert.All(listed, e => Assert.Null(e!["secret"]));
        var fetched = await Api.JsonAsync(await http.GetAsync($"/v1/webhooks/{ok["id"]}"));
        Assert.Equal("ci", (string?)fetched["description"]);
        Assert.Null(fetched["secret"]);

        var training = await Api.UploadFileAsync(http, Enumerable.Range(0, 10).Select(i => Api.ChatLine($"Question {i}?", $"Answer {i}.")));
        var created = await Api.CreateJobAsync(http, new { model = "tiny-llama-demo", training_file = training, seed = 1, hyperparameters = new { n_epochs = 1, batch_size = 5 } });
        string jobId = (string)created["id"]!;
        var job = await Api.WaitForFinishAsync(http, jobId);
        Api.AssertSucceeded(job);
        var pending = (await Api.JsonAsync(await http.GetAsync($"/v1/webhooks/{ok["id"]}/deliveries")))["data"]!.AsArray().Single()!;
        Assert.Equal(("pending", 0), ((string)pending["status"]!, (int)pending["attempts"]!));

        // Killed and started again on the same data folder: the pending deliveries go out from the new process, signed with
        // the secrets the first one encrypted (Data Protection's keys are kept in the data folder).
        await first.KillAsync();
        await using var second = await ServiceProcess.StartAsync(folder.FullName, [.. settings, ("Webhooks__PollSeconds", "0.2")]);
        http = second.Http;

        var okLog = await WaitForDeliveryAsync(http, (string)ok["id"]!, "delivered");
        var flakyLog = await WaitForDeliveryAsync(http, (string)flaky["id"]!, "delivered");
        var downLog = await WaitForDeliveryAsync(http, (string)down["id"]!, "failed");
        Assert.Equal((1, 200, (string?)null), ((int)okLog["attempts"]!, (int)okLog["last_status_code"]!, (string?)okLog["last_error"]));
        Assert.Equal((3, 200), ((int)flakyLog["attempts"]!, (int)flakyLog["last_status_code"]!));
        Assert.Equal((3, 503, "answered 503"), ((int)downLog["attempts"]!, (int)downLog["last_status_code"]!, (string?)downLog["last_error"]));
        Assert.Null(downLog["next_attempt_at"]);
        foreach (var log in new[] { okLog, flakyLog, downLog })
            Assert.Equal((WebhookEvents.FineTuningJobSucceeded, jobId), ((string)log["type"]!, (string)log["data"]!["id"]!));
        Assert.Empty((await Api.JsonAsync(await http.GetAsync($"/v1/webhooks/{other["id"]}/deliveries")))["data"]!.AsArray());
        Assert.Empty(receiver.Got("/never"));

        // The receivers got OpenAI's event body; one event id for every endpoint and every retry (receivers de-duplicate on it).
        var got = Assert.Single(receiver.Got("/ok"));
        var body = JsonNode.Parse(got.Body)!;
        Assert.Equal(("event", WebhookEvents.FineTuningJobSucceeded, jobId), ((string)body["object"]!, (string)body["type"]!, (string)body["data"]!["id"]!));
        Assert.Equal((string)okLog["event_id"]!, (string)body["id"]!);
        Assert.Equal((string)body["id"]!, got.Headers["webhook-id"]);
        Assert.InRange((long)body["created_at"]!, (long)job["finished_at"]!, (long)job["finished_at"]! + 1);
        var flakyGot = receiver.Got("/flaky");
        Assert.Equal(3, flakyGot.Count);
        Assert.All(flakyGot, g => Assert.Equal(got.Headers["webhook-id"], g.Headers["webhook-id"]));
        Assert.Equal(3, receiver.Got("/down").Count);

        // The Standard Webhooks signature, computed here from the secret shown at creation.
        foreach (var (delivery, key) in new[] { (got, secret), (flakyGot[^1], (string)flaky["secret"]!) })
        {
            var mac = HMACSHA256.HashData(Convert.FromBase64String(key["whsec_".Length..]),
                Encoding.UTF8.GetBytes($"{delivery.Headers["webhook-id"]}.{delivery.Headers["webhook-timestamp"]}.{delivery.Body}"));
            Assert.Equal("v1," + Convert.ToBase64String(mac), delivery.Headers["webhook-signature"]);
            Assert.InRange(long.Parse(delivery.Headers["webhook-timestamp"]), DateTimeOffset.UtcNow.ToUnixTimeSeconds() - 120, DateTimeOffset.UtcNow.ToUnixTimeSeconds());
        }

        // The official client verifies them, and refuses a changed body, another secret or another id (webhook.mjs).
        var captured = Path.Combine(folder.FullName, "captured.json");
        await File.WriteAllTextAsync(captured, JsonSerializer.Serialize(new[] { (got, secret), (flakyGot[^1], (string)flaky["secret"]!) }
            .Select(c => new { secret = c.Item2, body = c.Item1.Body, headers = c.Item1.Headers })));
        var output = await NodeAsync("webhook.mjs", captured);
        Assert.Contains($"verified fine_tuning.job.succeeded {jobId}", output);
        Assert.Contains("every webhook verified", output);

        // Deleting an endpoint drops it and its log.
        Assert.True((await http.DeleteAsync($"/v1/webhooks/{ok["id"]}")).IsSuccessStatusCode);
        await Api.AssertErrorAsync(await http.GetAsync($"/v1/webhooks/{ok["id"]}"), 404, "webhook_id");
        await Api.AssertErrorAsync(await http.GetAsync($"/v1/webhooks/{ok["id"]}/deliveries"), 404, "webhook_id");
    }

    static async Task<JsonObject> CreateAsync(HttpClient http, object request)
    {
        var response = await http.PostAsJsonAsync("/v1/webhooks", request);
        var body = await Api.JsonAsync(response);
        Assert.True(response.IsSuccessStatusCode, body.ToJsonString());
        Assert.Equal("webhook_endpoint", (string?)body["object"]);
        return body;
    }

    /// <summary>The endpoint's single delivery once it has <paramref name="status"/>.</summary>
    static async Task<JsonObject> WaitForDeliveryAsync(HttpClient http, string endpointId, string status)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromSeconds(30);
        while (true)
        {
            var log = (await Api.JsonAsync(await http.GetAsync($"/v1/webhooks/{endpointId}/deliveries")))["data"]!.AsArray();
            if (log.Count == 1 && (string?)log[0]!["status"] == status) return log[0]!.AsObject();
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"endpoint {endpointId}'s log is {log.ToJsonString()}, waiting for {status}");
            await Task.Delay(100);
        }
    }

    static async Task<string> NodeAsync(string script, params string[] args)
    {
        Assert.True(Directory.Exists(Path.Combine(ClientDir, "node_modules", "openai")),
            $"the openai npm package is missing from {ClientDir}; scripts/test.sh installs it (npm ci)");
        using var process = Process.Start(new ProcessStartInfo("node", [Path.Combine(ClientDir, script), .. args])
            { WorkingDirectory = ClientDir, RedirectStandardOutput = true, RedirectStandardError = true })!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(1));
        Assert.True(process.ExitCode == 0, $"node {script} exited {process.ExitCode}:\n{await output}\n{await errors}");
        return await output;
    }

    public sealed record Delivery(string Body, Dictionary<string, string> Headers);

    /// <summary>A webhook receiver on loopback: records each request by path; a path may answer 503 its first N times.</summary>
    sealed class Receiver : IAsyncDisposable
    {
        readonly HttpListener listener = new();
        readonly ConcurrentDictionary<string, ConcurrentQueue<Delivery>> got = new();
        readonly ConcurrentDictionary<string, int> failuresLeft = new();
        readonly Task loop;
        readonly int port;

        public Receiver()
        {
            port = FreePort();
            listener.Prefixes.Add($"http://127.0.0.1:{port}/");
            listener.Start();
            loop = Task.Run(LoopAsync);
        }

        public string Url(string path) => $"http://127.0.0.1:{port}{path}";
        public void FailFirst(string path, int times) => failuresLeft[path] = times;
        public List<Delivery> Got(string path) => got.TryGetValue(path, out var queue) ? [.. queue] : [];

        async Task LoopAsync()
        {
            while (listener.IsListening)
            {
                HttpListenerContext context;
                try { context = await listener.GetContextAsync(); }
                catch (Exception) when (!listener.IsListening) { return; }
                catch (HttpListenerException) { return; }
                using var reader = new StreamReader(context.Request.InputStream, Encoding.UTF8);
                var body = await reader.ReadToEndAsync();
                var headers = new[] { "webhook-id", "webhook-timestamp", "webhook-signature", "content-type" }
                    .Where(h => context.Request.Headers[h] is not null).ToDictionary(h => h, h => context.Request.Headers[h]!);
                string path = context.Request.Url!.AbsolutePath;
                got.GetOrAdd(path, _ => new()).Enqueue(new Delivery(body, headers));
                bool fail = failuresLeft.TryGetValue(path, out var left) && left > 0;
                if (fail) failuresLeft[path] = left - 1;
                context.Response.StatusCode = fail ? 503 : 200;
                context.Response.Close();
            }
        }

        public async ValueTask DisposeAsync()
        {
            listener.Stop();
            listener.Close();
            await loop.WaitAsync(TimeSpan.FromSeconds(5)).ContinueWith(_ => { });
        }

        static int FreePort()
        {
            using var socket = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
            socket.Start();
            return ((IPEndPoint)socket.LocalEndpoint).Port;
        }
    }
}

/// <summary>Endpoints the service refuses (server-side request forgery and bad input): 400s naming the field, nothing stored.</summary>
[Collection(ServiceCollection.Name)]
public sealed class WebhookRequestsTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    [Theory]
    [InlineData("https://127.0.0.1/hook", "127.0.0.1")]        // loopback: refused without Webhooks:AllowedNetworks
    [InlineData("https://localhost:8443/hook", "localhost")]   // a name that resolves to loopback
    [InlineData("https://169.254.169.254/latest/meta-data", "169.254.169.254")]   // link-local: cloud metadata
    [InlineData("https://10.1.2.3/hook", "10.1.2.3")]
    [InlineData("https://[::ffff:192.168.0.1]/hook", "192.168.0.1")]   // IPv4-mapped IPv6
    [InlineData("https://[fd00::1]/hook", "fd00::1")]
    [InlineData("http://93.184.215.14/hook", "https")]          // http without Webhooks:AllowHttp
    [InlineData("https://user:secret@93.184.215.14/hook", "user name")]
    [InlineData("ftp://93.184.215.14/hook", "absolute https URL")]
    [InlineData("not a url", "absolute https URL")]
    [InlineData("", "required")]
    public async Task ARefusedUrlIsA400NamingUrl(string url, string said)
    {
        int before = factory.Query(db => db.WebhookEndpoints.Count());
        var error = await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/webhooks", new { url }), 400, "url");
        Assert.Contains(said, (string)error["message"]!);
        Assert.Equal(before, factory.Query(db => db.WebhookEndpoints.Count()));
    }

    [Fact]
    public async Task UnknownEventTypesAndLongDescriptionsAre400s()
    {
        const string url = "https://93.184.215.14/hook";   // public, given as an address: no DNS needed
        var error = await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/webhooks",
            new { url, events = new[] { WebhookEvents.FineTuningJobSucceeded, "fine_tuning.job.started" } }), 400, "events");
        Assert.Contains("events[1]", (string)error["message"]!);
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/webhooks", new { url, events = Array.Empty<string>() }), 400, "events");
        await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/webhooks", new { url, description = new string('x', 513) }), 400, "description");
        await Api.AssertErrorAsync(await client.GetAsync("/v1/webhooks/wh_nope/deliveries"), 404, "webhook_id");

        // A public address is accepted (an eval event only, so no job of the shared service is ever sent there).
        var created = await Api.JsonAsync(await client.PostAsJsonAsync("/v1/webhooks", new { url, events = new[] { WebhookEvents.EvalRunSucceeded } }));
        Assert.StartsWith("whsec_", (string)created["secret"]!);
        var stored = factory.Query(db => db.WebhookEndpoints.Single(e => e.Id == (string)created["id"]!));
        Assert.DoesNotContain((string)created["secret"]!, stored.ProtectedSecret);   // kept encrypted
        Assert.True((await client.DeleteAsync($"/v1/webhooks/{created["id"]}")).IsSuccessStatusCode);
    }

    /// <summary>
    /// A cancelled job's event goes to the outbox with the status change; an endpoint whose URL became one this server may
    /// not reach (stored before the settings changed, or a name rebound to an internal address) is refused at delivery
    /// time, without a connection, and the log says why.
    /// </summary>
    [Fact]
    public async Task ACancelledJobsEventIsRefusedAtDeliveryWhenItsUrlIsNoLongerAllowed()
    {
        var endpoint = new WebhookEndpoint
        {
            Id = "wh_" + Ids.New(), ProjectId = Project.DefaultId, Url = "https://127.0.0.1:9/hook", Events = WebhookEvents.FineTuningJobCancelled,
            ProtectedSecret = "unused: refused before signing", CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
        };
        factory.Query(db => { db.WebhookEndpoints.Add(endpoint); return db.SaveChanges(); });
        try
        {
            var training = await Api.UploadFileAsync(client, Enumerable.Range(0, 10).Select(i => Api.ChatLine($"Q{i}?", $"A{i}.")));
            var job = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = training, hyperparameters = new { n_epochs = 50 } });
            var cancelled = await Api.JsonAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{job["id"]}/cancel", null));
            Assert.Equal("cancelled", (string?)cancelled["status"]);
            for (var deadline = DateTime.UtcNow.AddSeconds(30); ; await Task.Delay(100))
            {
                var log = (await Api.JsonAsync(await client.GetAsync($"/v1/webhooks/{endpoint.Id}/deliveries")))["data"]!.AsArray()
                    .Where(d => (string?)d!["data"]!["id"] == (string?)job["id"]).ToList();
                if (log is [{ } delivery] && (int)delivery["attempts"]! >= 1)
                {
                    Assert.Equal((WebhookEvents.FineTuningJobCancelled, "pending"), ((string)delivery["type"]!, (string)delivery["status"]!));
                    Assert.StartsWith("evt_", (string)delivery["event_id"]!);
                    Assert.Contains("loopback", (string)delivery["last_error"]!);
                    Assert.Null(delivery["last_status_code"]);
                    Assert.NotNull(delivery["next_attempt_at"]);   // retried later: the settings may allow it by then
                    break;
                }
                Assert.True(DateTime.UtcNow < deadline, $"no attempt logged: {string.Join(", ", log)}");
            }
        }
        finally
        {
            await client.DeleteAsync($"/v1/webhooks/{endpoint.Id}");
        }
    }

    /// <summary>An eval run that ends (here: cancelled through the API while in progress) queues its eval.run.* event once.</summary>
    [Fact]
    public async Task ACancelledEvalRunQueuesItsEventOnce()
    {
        string id = Ids.New();
        var endpoint = new WebhookEndpoint
        {
            Id = "wh_" + id, ProjectId = Project.DefaultId, Url = "https://127.0.0.1:9/hook", Events = WebhookEvents.EvalRunCanceled,
            ProtectedSecret = "unused: refused before signing", CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
        };
        var eval = new Eval { Id = "eval_" + id, Name = "e", DataSourceConfig = "{}", TestingCriteria = "[]" };
        // In progress already, so the service's executor never claims it: only the cancel below ends it.
        var run = new EvalRun { Id = "evalrun_" + id, EvalId = eval.Id, Name = "r", Model = "tiny-llama-demo", Group = "g_" + id,
            Status = EvalRunStatus.InProgress, DataSource = "{}" };
        factory.Query(db => { db.WebhookEndpoints.Add(endpoint); db.Evals.Add(eval); db.EvalRuns.Add(run); return db.SaveChanges(); });
        try
        {
            for (int i = 0; i < 2; i++)
            {
                var cancelled = await Api.JsonAsync(await client.PostAsync($"/v1/evals/{eval.Id}/runs/{run.Id}/cancel", null));
                Assert.Equal("canceled", (string?)cancelled["status"]);
            }
            var queued = factory.Query(db => db.WebhookDeliveries.Where(d => d.EndpointId == endpoint.Id).ToList());
            Assert.Equal((WebhookEvents.EvalRunCanceled, run.Id), (Assert.Single(queued).Type, queued[0].DataId));
        }
        finally
        {
            await client.DeleteAsync($"/v1/webhooks/{endpoint.Id}");
            await client.DeleteAsync($"/v1/evals/{eval.Id}");
        }
    }

    [Fact]
    public void OnlyPublicAddressesOrAllowedNetworksMayBeReached()
    {
        var strict = new WebhookTargets(new WebhookOptions());
        foreach (var address in new[] { "127.0.0.1", "::1", "10.0.0.1", "172.16.5.4", "192.168.1.1", "169.254.169.254", "100.64.0.1", "0.0.0.0",
                     "224.0.0.1", "255.255.255.255", "fe80::1", "fc00::1", "::ffff:127.0.0.1", "::" })
            Assert.False(strict.MayConnect(IPAddress.Parse(address)), address);
        foreach (var address in new[] { "93.184.215.14", "8.8.8.8", "2606:4700::1111", "::ffff:8.8.8.8", "172.32.0.1" })
            Assert.True(strict.MayConnect(IPAddress.Parse(address)), address);
        var loopback = new WebhookTargets(new WebhookOptions { AllowedNetworks = ["127.0.0.0/8"] });
        Assert.True(loopback.MayConnect(IPAddress.Parse("127.0.0.1")));
        Assert.False(loopback.MayConnect(IPAddress.Parse("10.0.0.1")));
    }
}
