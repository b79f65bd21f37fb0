using System.Net;
using System.Net.Http.Json;
using AdapterService.Api.Hubs;
using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Http.Connections;
using Microsoft.AspNetCore.Routing;
using Microsoft.AspNetCore.SignalR.Client;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterService.Api.Tests;

/// <summary>Auth over every registered route, a revoked key's live hub connection, and pre-training across projects.</summary>
[Collection(SecuredServiceCollection.Name)]
public sealed class SecurityTests(SecuredServiceFactory factory)
{
    /// <summary>The routes open by design: probes, scrapers, the API's description and the dashboard's files.</summary>
    static readonly string[] Open = ["/healthz", "/readyz", "/metrics", "/swagger", "/"];

    /// <summary>
    /// Every route the app registered, read from its endpoint data source (so routes added later are covered without a
    /// list to update): without a key or with a wrong one 401; an admin route with a project's key 403; a route with no
    /// authorization at all must be one of the few open ones.
    /// </summary>
    [Fact]
    public async Task EveryRegisteredEndpointNeedsAKeyAndAdminRoutesTheAdminKey()
    {
        factory.CreateClient();
        var endpoints = factory.Services.GetRequiredService<EndpointDataSource>().Endpoints.OfType<RouteEndpoint>().ToList();
        Assert.True(endpoints.Count > 40, $"only {endpoints.Count} endpoints found");
        var (_, projectKey) = await factory.NewProjectAsync("team-routes");
        var clients = new[] { factory.ClientWithKey(null), factory.ClientWithKey("sk-proj-wrong"), factory.ClientWithKey(SecuredServiceFactory.AdminKey + "x") };
        var project = factory.ClientWithKey(projectKey);
        int checkedRoutes = 0;
        var wrong = new List<string>();
        foreach (var endpoint in endpoints)
        {
            var path = "/" + string.Join("/", (endpoint.RoutePattern.RawText ?? "").Trim('/').Split('/')
                .Select(s => s.StartsWith('{') ? "x-route-test" : s));
            var authorize = endpoint.Metadata.GetOrderedMetadata<IAuthorizeData>();
            if (authorize.Count == 0 || endpoint.Metadata.GetMetadata<IAllowAnonymous>() is not null)
            {
                if (!Open.Any(o => path == o || o != "/" && path.StartsWith(o + "/", StringComparison.Ordinal)))
                    wrong.Add($"{endpoint.DisplayName} ({path}) answers without a key");
                continue;
            }
            foreach (var method in endpoint.Metadata.GetMetadata<HttpMethodMetadata>()?.HttpMethods ?? ["GET"])
            {
                HttpRequestMessage Request() => new(new HttpMethod(method), path) { Content = method is "POST" or "PUT" or "PATCH" ? JsonContent.Create(new { }) : null };
                foreach (var client in clients)
                    if ((await client.SendAsync(Request())).StatusCode is var status && status != HttpStatusCode.Unauthorized)
                        wrong.Add($"{method} {path} without a valid key: {status}");
                if (authorize.Any(a => a.Policy == Infrastructure.Auth.AdminPolicy)
                    && (await project.SendAsync(Request())).StatusCode is var projectStatus && projectStatus != HttpStatusCode.Forbidden)
                    wrong.Add($"{method} {path} with a project's key: {projectStatus}");
                checkedRoutes++;
            }
        }
        Assert.True(wrong.Count == 0, string.Join("\n", wrong));
        Assert.True(checkedRoutes > 40, $"only {checkedRoutes} routes checked");
    }

    /// <summary>A key is checked when a hub connection opens; revoking it closes the connection at once.</summary>
    [Fact]
    public async Task RevokingAKeyClosesItsHubConnections()
    {
        var (projectId, key) = await factory.NewProjectAsync("team-revoked-hub");
        var (_, otherKey) = await factory.NewProjectAsync("team-kept-hub");
        HubConnection Hub(string k) => new HubConnectionBuilder()
            .WithUrl(new Uri(factory.Server.BaseAddress, "hubs/jobs"), o =>
            {
                o.HttpMessageHandlerFactory = _ => factory.Server.CreateHandler();
                o.Transports = HttpTransportType.LongPolling;
                o.AccessTokenProvider = () => Task.FromResult<string?>(k);
            })
            .Build();
        await using var hub = Hub(key);
        await using var other = Hub(otherKey);
        var closed = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        hub.Closed += _ => { closed.TrySetResult(); return Task.CompletedTask; };
        await hub.StartAsync();
        await other.StartAsync();

        var admin = factory.ClientWithKey(SecuredServiceFactory.AdminKey);
        var keyId = (string)(await Api.JsonAsync(await admin.GetAsync($"/v1/organization/projects/{projectId}/api_keys")))["data"]![0]!["id"]!;
        await Api.JsonAsync(await admin.DeleteAsync($"/v1/organization/projects/{projectId}/api_keys/{keyId}"));
        await closed.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(HubConnectionState.Disconnected, hub.State);
        Assert.Equal(HubConnectionState.Connected, other.State);   // another key's connection stays
        await Assert.ThrowsAnyAsync<Exception>(() => Hub(key).StartAsync());
    }

    /// <summary>
    /// Racing POSTs make one pre-training job; it counts against the project's cap of active jobs; and another project
    /// is told the model is being pre-trained, never given the job's id (its events are not theirs).
    /// </summary>
    [Fact]
    public async Task PretrainMakesOneJobUnderRacingPostsCountsAgainstTheCapAndKeepsItsIdInItsProject()
    {
        const string url = "/v1/models/vit-fashion-mnist-demo/pretrain";
        var (_, fullKey) = await factory.NewProjectAsync("team-pretrain-full");
        var full = factory.ClientWithKey(fullKey);
        var fileId = await Api.UploadFileAsync(full, Enumerable.Repeat(Api.ChatLine("Q", "A"), 10));
        var busy = new List<string>();
        for (int i = 0; i < SecuredServiceFactory.MaxActiveJobs; i++)
            busy.Add((string)(await Api.CreateJobAsync(full, new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 50, batch_size = 1 } }))["id"]!);
        Assert.Equal("too_many_active_jobs", (string?)(await Api.AssertErrorAsync(await full.PostAsync(url, null), 429))["code"]);
        // The cap is checked before the training file is read: a full project is refused before its file is even looked up.
        var unread = await full.PostAsJsonAsync("/v1/fine_tuning/jobs", new { model = "tiny-llama-demo", training_file = "file-never-uploaded" });
        Assert.Equal("too_many_active_jobs", (string?)(await Api.AssertErrorAsync(unread, 429))["code"]);
        foreach (var job in busy) await Api.JsonAsync(await full.PostAsync($"/v1/fine_tuning/jobs/{job}/cancel", null));

        var (_, ownerKey) = await factory.NewProjectAsync("team-pretrain");
        var owner = factory.ClientWithKey(ownerKey);
        var answers = await Task.WhenAll(Enumerable.Range(0, 16).Select(_ => owner.PostAsync(url, null)));
        var ids = new HashSet<string>();
        foreach (var answer in answers)
        {
            Assert.Equal(HttpStatusCode.Accepted, answer.StatusCode);
            ids.Add((string)(await Api.JsonAsync(answer))["job_id"]!);
        }
        var jobId = Assert.Single(ids);
        var listed = (await Api.JsonAsync(await owner.GetAsync("/v1/fine_tuning/jobs")))["data"]!.AsArray();
        Assert.Single(listed, j => (string?)j!["model"] == "vit-fashion-mnist-demo");

        var (_, otherKey) = await factory.NewProjectAsync("team-pretrain-other");
        var refused = await factory.ClientWithKey(otherKey).PostAsync(url, null);
        var text = await refused.Content.ReadAsStringAsync();
        Assert.Equal(HttpStatusCode.Conflict, refused.StatusCode);
        Assert.DoesNotContain(jobId, text);
        Assert.Contains("pretraining_in_progress", text);
        await Api.JsonAsync(await owner.PostAsync($"/v1/fine_tuning/jobs/{jobId}/cancel", null));
    }
}
