using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.SignalR;
using Microsoft.AspNetCore.SignalR.Client;

namespace AdapterService.Api.Tests;

/// <summary>Auth on: keys, admin endpoints, and one project (tenant) never reaching another's files, jobs or models.</summary>
[Collection(SecuredServiceCollection.Name)]
public sealed class TenancyTests(SecuredServiceFactory factory)
{
    static readonly string[] Endpoints =
    [
        "POST /v1/files", "GET /v1/files", "GET /v1/files/file-x", "GET /v1/files/file-x/content", "DELETE /v1/files/file-x",
        "POST /v1/fine_tuning/jobs", "GET /v1/fine_tuning/jobs", "GET /v1/fine_tuning/jobs/ftjob-x", "POST /v1/fine_tuning/jobs/ftjob-x/cancel",
        "POST /v1/fine_tuning/jobs/ftjob-x/pause", "POST /v1/fine_tuning/jobs/ftjob-x/resume", "GET /v1/fine_tuning/jobs/ftjob-x/events",
        "GET /v1/fine_tuning/jobs/ftjob-x/checkpoints", "POST /v1/completions", "POST /v1/completions/batch", "POST /v1/chat/completions", "POST /tokenize", "POST /detokenize",
        "GET /v1/models", "GET /v1/models/tiny-llama-demo", "DELETE /v1/models/ft:x", "GET /v1/adapters", "GET /v1/adapters/adapter-x",
        "DELETE /v1/adapters/adapter-x", "GET /v1/adapters/adapter-x/export", "POST /v1/adapters/import",
        "GET /v1/organization/projects", "POST /v1/organization/projects", "GET /v1/organization/projects/proj_default/api_keys",
        "POST /hubs/jobs/negotiate?negotiateVersion=1",
    ];

    static HttpRequestMessage Request(string endpoint)
    {
        var (method, path) = (endpoint.Split(' ')[0], endpoint.Split(' ')[1]);
        return new HttpRequestMessage(new HttpMethod(method), path) { Content = method == "POST" ? JsonContent.Create(new { }) : null };
    }

    [Fact]
    public async Task EveryEndpointAnswers401WithoutAKeyOrWithAWrongOne()
    {
        foreach (var key in new[] { null, "sk-proj-wrong", SecuredServiceFactory.AdminKey + "x" })
        {
            var client = factory.ClientWithKey(key);
            foreach (var endpoint in Endpoints)
            {
                var error = await Api.AssertErrorAsync(await client.SendAsync(Request(endpoint)), 401);
                Assert.Equal("invalid_api_key", (string?)error["code"]);
            }
        }
        // The operations endpoints stay open for probes and scrapers.
        var anonymous = factory.ClientWithKey(null);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/healthz")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/metrics")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/hangfire")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await factory.ClientWithKey(SecuredServiceFactory.AdminKey).GetAsync("/hangfire")).StatusCode);
    }

    [Fact]
    public async Task TheOpenApiDocumentOffersBearerAuth()
    {
        var document = await factory.ClientWithKey(null).GetStringAsync("/swagger/v1/swagger.json");
        var scheme = JsonNode.Parse(document)!["components"]!["securitySchemes"]!["bearer"]!;
        Assert.Equal("http", (string?)scheme["type"]);
        Assert.Equal("bearer", (string?)scheme["scheme"]);
    }

    [Fact]
    public async Task OnlyTheAdminKeyManagesProjectsAndARevokedKeyStopsWorking()
    {
        var (projectId, key) = await factory.NewProjectAsync("team-keys");
        Assert.StartsWith("sk-proj-", key);
        var client = factory.ClientWithKey(key);
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/v1/models")).StatusCode);
        foreach (var endpoint in Endpoints.Where(e => e.Contains("/organization/")))
            Assert.Equal("insufficient_permissions", (string?)(await Api.AssertErrorAsync(await client.SendAsync(Request(endpoint)), 403))["code"]);
        Assert.Equal(HttpStatusCode.Forbidden, (await client.GetAsync("/hangfire")).StatusCode);

        var admin = factory.ClientWithKey(SecuredServiceFactory.AdminKey);
        var keys = await Api.JsonAsync(await admin.GetAsync($"/v1/organization/projects/{projectId}/api_keys"));
        var listed = keys["data"]!.AsArray().Single()!;
        Assert.Null((string?)listed["value"]);   // the secret is shown once, at creation
        Assert.StartsWith(key[..12], (string)listed["redacted_value"]!);
        Assert.DoesNotContain(key, keys.ToJsonString());
        Assert.DoesNotContain(factory.Query(db => db.ApiKeys.Select(k => k.Hash).ToList()), h => h.Contains(key[8..]));

        var revoked = await Api.JsonAsync(await admin.DeleteAsync($"/v1/organization/projects/{projectId}/api_keys/{(string)listed["id"]!}"));
        Assert.True((bool)revoked["deleted"]!);
        await Api.AssertErrorAsync(await client.GetAsync("/v1/models"), 401);
        await Api.AssertErrorAsync(await admin.GetAsync("/v1/organization/projects/proj_nope/api_keys"), 404);
        await Api.AssertErrorAsync(await admin.PostAsJsonAsync("/v1/organization/projects", new { name = "" }), 400, "name");
    }

    [Fact]
    public async Task AProjectCannotListReadUseCancelDeleteOrSubscribeToAnotherProjectsThings()
    {
        var (_, keyA) = await factory.NewProjectAsync("team-a");
        var (_, keyB) = await factory.NewProjectAsync("team-b");
        HttpClient a = factory.ClientWithKey(keyA), b = factory.ClientWithKey(keyB);

        // B trains a model (with checkpoints) and keeps a second job paused, so every kind of thing exists.
        var fileB = await Api.UploadFileAsync(b, Enumerable.Repeat(Api.ChatLine("Secret word?", "Plover"), 10));
        var jobB = (string)(await Api.CreateJobAsync(b, new { model = "tiny-llama-demo", training_file = fileB, seed = 3, hyperparameters = new { n_epochs = 8, batch_size = 2 } }))["id"]!;
        var doneB = await Api.WaitForFinishAsync(b, jobB);
        Assert.Equal("succeeded", (string?)doneB["status"]);
        var modelB = (string)doneB["fine_tuned_model"]!;
        var checkpointB = (string)(await Api.JsonAsync(await b.GetAsync($"/v1/fine_tuning/jobs/{jobB}/checkpoints")))["data"]![0]!["fine_tuned_model_checkpoint"]!;
        var adapterB = (string)(await Api.JsonAsync(await b.GetAsync("/v1/adapters")))["data"]![0]!["id"]!;
        var pausedB = (string)(await Api.CreateJobAsync(b, new { model = "tiny-llama-demo", training_file = fileB, hyperparameters = new { n_epochs = 50 } }))["id"]!;
        await Api.JsonAsync(await b.PostAsync($"/v1/fine_tuning/jobs/{pausedB}/pause", null));

        // Lists show none of B's things to A.
        foreach (var (path, id) in new[] { ("/v1/files", fileB), ("/v1/fine_tuning/jobs", jobB), ("/v1/models", modelB), ("/v1/adapters", adapterB) })
        {
            var list = await a.GetStringAsync(path);
            Assert.DoesNotContain(id, list);
            Assert.Contains(id, await b.GetStringAsync(path));
        }
        Assert.Contains("tiny-llama-demo", await a.GetStringAsync("/v1/models"));   // base models are everyone's

        // Every id of B's answers A exactly as a missing id does.
        async Task SameAsMissing(Func<string, Task<HttpResponseMessage>> send, string id, string missing, int status = 404)
        {
            var error = await Api.AssertErrorAsync(await send(id), status);
            var expected = await Api.AssertErrorAsync(await send(missing), status);
            Assert.Equal((string)expected["message"]!, ((string)error["message"]!).Replace(id, missing));
            Assert.Equal((string?)expected["code"], (string?)error["code"]);
        }
        const string noFile = "file-000000000000000000000000", noJob = "ftjob-000000000000000000000000", noAdapter = "adapter-000000000000000000000000";
        await SameAsMissing(id => a.GetAsync($"/v1/files/{id}"), fileB, noFile);
        await SameAsMissing(id => a.GetAsync($"/v1/files/{id}/content"), fileB, noFile);
        await SameAsMissing(id => a.DeleteAsync($"/v1/files/{id}"), fileB, noFile);
        await SameAsMissing(id => a.PostAsJsonAsync("/v1/fine_tuning/jobs", new { model = "tiny-llama-demo", training_file = id }), fileB, noFile, 400);
        foreach (var job in new[] { jobB, pausedB })
        {
            await SameAsMissing(id => a.GetAsync($"/v1/fine_tuning/jobs/{id}"), job, noJob);
            foreach (var action in new[] { "cancel", "pause", "resume" })
                await SameAsMissing(id => a.PostAsync($"/v1/fine_tuning/jobs/{id}/{action}", null), job, noJob);
            await SameAsMissing(id => a.GetAsync($"/v1/fine_tuning/jobs/{id}/events"), job, noJob);
            await SameAsMissing(id => a.GetAsync($"/v1/fine_tuning/jobs/{id}/checkpoints"), job, noJob);
        }
        await SameAsMissing(id => a.GetAsync($"/v1/adapters/{id}"), adapterB, noAdapter);
        await SameAsMissing(id => a.GetAsync($"/v1/adapters/{id}/export"), adapterB, noAdapter);
        await SameAsMissing(id => a.DeleteAsync($"/v1/adapters/{id}"), adapterB, noAdapter);
        foreach (var model in new[] { modelB, checkpointB })
        {
            const string noModel = "ft:tiny-llama-demo::ftjob-000000000000000000000000";
            await SameAsMissing(id => a.GetAsync($"/v1/models/{id}"), model, noModel);
            await SameAsMissing(id => a.DeleteAsync($"/v1/models/{id}"), model, noModel);
            await SameAsMissing(id => a.PostAsJsonAsync("/v1/completions", new { model = id, prompt = "Hi", max_tokens = 2 }), model, noModel);
            await SameAsMissing(id => a.PostAsJsonAsync("/v1/chat/completions",
                new { model = id, max_tokens = 2, messages = new[] { new { role = "user", content = "Secret word?" } } }), model, noModel);
            await SameAsMissing(id => a.PostAsJsonAsync("/v1/completions/batch",
                new { inputs = new[] { new { model = "tiny-llama-demo", prompt = "Hi", max_tokens = 2 }, new { model = id, prompt = "Hi", max_tokens = 2 } } }), model, noModel);
        }

        // A's hub connection cannot subscribe to B's job; B's can, and receives its status.
        await using (var hubA = await HubAsync(keyA))
        {
            var refused = await Assert.ThrowsAsync<HubException>(() => hubA.InvokeAsync("SubscribeToJob", pausedB));
            Assert.Contains("No such fine-tuning job", refused.Message);
        }
        await using (var hubB = await HubAsync(keyB))
        {
            var status = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
            // The relay may still be delivering the earlier "paused" when the subscription starts: wait for the cancel.
            hubB.On<JsonObject>("status", m => { if ((string?)m["status"] == "cancelled") status.TrySetResult("cancelled"); });
            await hubB.InvokeAsync("SubscribeToJob", pausedB);
            await Api.JsonAsync(await b.PostAsync($"/v1/fine_tuning/jobs/{pausedB}/cancel", null));
            Assert.Equal("cancelled", await status.Task.WaitAsync(TimeSpan.FromSeconds(30)));
        }
        var wrong = await Assert.ThrowsAsync<HttpRequestException>(() => HubAsync("sk-proj-wrong"));
        Assert.Equal(HttpStatusCode.Unauthorized, wrong.StatusCode);

        // B still has everything A tried to touch, and its model still answers.
        Assert.Equal(HttpStatusCode.OK, (await b.GetAsync($"/v1/files/{fileB}")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await b.GetAsync($"/v1/adapters/{adapterB}")).StatusCode);
        Assert.Equal("succeeded", (string?)(await Api.JsonAsync(await b.GetAsync($"/v1/fine_tuning/jobs/{jobB}")))["status"]);
        Assert.Equal("Plover", await Api.ChatAsync(b, modelB, "Secret word?"));

        // An imported adapter belongs to the importing project.
        var zip = await b.GetByteArrayAsync($"/v1/adapters/{adapterB}/export");
        using var form = new MultipartFormDataContent { { new ByteArrayContent(zip), "file", "a.zip" }, { new StringContent("tiny-llama-demo"), "model" } };
        var imported = (string)(await Api.JsonAsync(await a.PostAsync("/v1/adapters/import", form)))["id"]!;
        Assert.Contains(imported, await a.GetStringAsync("/v1/adapters"));
        Assert.DoesNotContain(imported, await b.GetStringAsync("/v1/adapters"));
    }

    [Fact]
    public async Task AProjectGets429BeyondItsActiveJobLimit()
    {
        var (_, key) = await factory.NewProjectAsync("team-busy");
        var client = factory.ClientWithKey(key);
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Q", "A"), 10));
        object Long() => new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 50, batch_size = 1 } };
        var jobs = new List<string>();
        for (int i = 0; i < SecuredServiceFactory.MaxActiveJobs; i++) jobs.Add((string)(await Api.CreateJobAsync(client, Long()))["id"]!);
        var error = await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/fine_tuning/jobs", Long()), 429);
        Assert.Equal("too_many_active_jobs", (string?)error["code"]);
        // Another project is not held back by this one.
        var (_, other) = await factory.NewProjectAsync("team-idle");
        var otherClient = factory.ClientWithKey(other);
        var otherFile = await Api.UploadFileAsync(otherClient, Enumerable.Repeat(Api.ChatLine("Q", "A"), 10));
        var otherJob = (string)(await Api.CreateJobAsync(otherClient, new { model = "tiny-llama-demo", training_file = otherFile, hyperparameters = new { n_epochs = 1 } }))["id"]!;
        await Api.JsonAsync(await otherClient.PostAsync($"/v1/fine_tuning/jobs/{otherJob}/cancel", null));

        await Api.JsonAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{jobs[0]}/cancel", null));
        jobs.Add((string)(await Api.CreateJobAsync(client, Long()))["id"]!);   // a free place again
        foreach (var job in jobs.Skip(1)) await Api.JsonAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{job}/cancel", null));
    }

    /// <summary>A sweep counts once per member against the active-job limit (2 here): 3 members are refused, 2 fill it.</summary>
    [Fact]
    public async Task ASweepCountsOncePerMemberAgainstTheActiveJobLimit()
    {
        var (_, key) = await factory.NewProjectAsync("team-sweep");
        var client = factory.ClientWithKey(key);
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Q", "A"), 10));
        object Sweep(params double[] rates) => new
        {
            model = "tiny-llama-demo", training_file = fileId, validation_file = fileId,
            hyperparameters = new { n_epochs = 50, batch_size = 1, learning_rate_multiplier = rates },
        };
        var tooBig = await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/fine_tuning/jobs", Sweep(0.5, 1, 2)), 429);
        Assert.Equal("too_many_active_jobs", (string?)tooBig["code"]);
        Assert.Contains("3 members", (string?)tooBig["message"]);
        var sweep = (string)(await Api.CreateJobAsync(client, Sweep(0.5, 1)))["id"]!;
        var full = await Api.AssertErrorAsync(await client.PostAsJsonAsync("/v1/fine_tuning/jobs",
            new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 1 } }), 429);
        Assert.Equal("too_many_active_jobs", (string?)full["code"]);
        await Api.JsonAsync(await client.PostAsync($"/v1/fine_tuning/jobs/{sweep}/cancel", null));
    }

    async Task<HubConnection> HubAsync(string key)
    {
        var hub = new HubConnectionBuilder()
            .WithUrl(new Uri(factory.Server.BaseAddress, "hubs/jobs"), o =>
            {
                o.HttpMessageHandlerFactory = _ => factory.Server.CreateHandler();
                o.Transports = HttpTransportType.LongPolling;
                o.AccessTokenProvider = () => Task.FromResult<string?>(key);
            })
            .Build();
        await hub.StartAsync();
        return hub;
    }
}
