using System.Net;
using System.Net.Http.Headers;
using System.Net.WebSockets;
using System.Text;

namespace AdapterService.Api.Tests;

/// <summary>
/// Without an admin key, web pages must not reach the service through a visitor's browser: DNS rebinding (a foreign
/// Host), cross-site form posts and fetches (a foreign Origin, Sec-Fetch-Site: cross-site), and the hub's WebSocket.
/// curl and the SDKs send none of these headers and keep working.
/// </summary>
[Collection(ServiceCollection.Name)]
public sealed class BrowserGuardTests(ServiceFactory factory)
{
    static HttpRequestMessage Get(string url, params (string Name, string Value)[] headers)
    {
        var request = new HttpRequestMessage(HttpMethod.Get, url);
        foreach (var (name, value) in headers) request.Headers.TryAddWithoutValidation(name, value);
        return request;
    }

    [Theory]
    [InlineData("attacker.example", false)]
    [InlineData("attacker.example:5080", false)]
    [InlineData("127.0.0.1.nip.io", false)]
    [InlineData("localhost", true)]
    [InlineData("localhost:5080", true)]
    [InlineData("127.0.0.1:5080", true)]
    [InlineData("[::1]:5080", true)]
    [InlineData("dashboard.localhost", true)]
    public async Task OnlyLoopbackHostNamesAreAnswered(string host, bool answered)
    {
        var client = factory.CreateClient();
        var response = await client.SendAsync(Get("/v1/models", ("Host", host)));
        if (answered) Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        else Assert.Equal("host_not_allowed", (string?)(await Api.AssertErrorAsync(response, 400))["code"]);
        var page = await client.SendAsync(Get("/", ("Host", host)));   // the dashboard and the Hangfire pages too
        Assert.Equal(answered ? HttpStatusCode.OK : HttpStatusCode.BadRequest, page.StatusCode);
    }

    [Fact]
    public async Task CrossSiteRequestsAreRefusedAndSameOriginOnesAndPlainClientsServed()
    {
        var client = factory.CreateClient();
        MultipartFormDataContent Form() => new()
        {
            { new StringContent("fine-tune"), "purpose" },
            { new ByteArrayContent(Encoding.UTF8.GetBytes(Api.ChatLine("q", "a") + "\n")), "file", "train.jsonl" },
        };
        async Task<HttpResponseMessage> Upload(params (string Name, string Value)[] headers)
        {
            var request = new HttpRequestMessage(HttpMethod.Post, "/v1/files") { Content = Form() };
            foreach (var (name, value) in headers) request.Headers.TryAddWithoutValidation(name, value);
            return await client.SendAsync(request);
        }

        // A form on another site posting a file (multipart/form-data needs no preflight), and a body-less POST.
        Assert.Equal("cross_site_request", (string?)(await Api.AssertErrorAsync(await Upload(("Origin", "https://attacker.example")), 403))["code"]);
        Assert.Equal("cross_site_request", (string?)(await Api.AssertErrorAsync(await Upload(("Origin", "null")), 403))["code"]);
        Assert.Equal("cross_site_request", (string?)(await Api.AssertErrorAsync(await Upload(("Origin", "http://localhost:3000")), 403))["code"]);
        var cancel = new HttpRequestMessage(HttpMethod.Post, "/v1/fine_tuning/jobs/ftjob-none/cancel");
        cancel.Headers.Add("Sec-Fetch-Site", "cross-site");
        Assert.Equal(HttpStatusCode.Forbidden, (await client.SendAsync(cancel)).StatusCode);
        Assert.Equal(HttpStatusCode.Forbidden, (await client.SendAsync(Get("/v1/files", ("Origin", "https://attacker.example")))).StatusCode);

        // The dashboard's own page (same origin), and curl or an SDK (no Origin, no Sec-Fetch-Site) as the README shows.
        Assert.Equal(HttpStatusCode.OK, (await Upload(("Origin", "http://localhost"), ("Sec-Fetch-Site", "same-origin"))).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await Upload()).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await client.SendAsync(Get("/v1/files", ("Sec-Fetch-Site", "none")))).StatusCode);
    }

    [Fact]
    public async Task TheHubsWebSocketUpgradeChecksTheOrigin()
    {
        factory.CreateClient();
        await AssertUpgradeAsync(factory, "https://attacker.example", null, accepted: false);
        await AssertUpgradeAsync(factory, "http://localhost", null, accepted: true);
    }

    internal static async Task AssertUpgradeAsync(ServiceFactory factory, string origin, string? key, bool accepted)
    {
        var ws = factory.Server.CreateWebSocketClient();
        ws.ConfigureRequest = r => r.Headers.Origin = origin;
        var url = new Uri(factory.Server.BaseAddress, "hubs/jobs" + (key is null ? "" : $"?access_token={Uri.EscapeDataString(key)}"));
        if (!accepted)
        {
            var refused = await Assert.ThrowsAnyAsync<Exception>(() => ws.ConnectAsync(url, CancellationToken.None));
            Assert.Contains("403", refused.Message);
            return;
        }
        using var socket = await ws.ConnectAsync(url, CancellationToken.None);
        Assert.Equal(WebSocketState.Open, socket.State);
        await socket.CloseOutputAsync(WebSocketCloseStatus.NormalClosure, "", CancellationToken.None);
    }
}

/// <summary>With auth on the key protects every route (a Bearer header no browser adds by itself); only the hub's WebSocket, which any page may open, is held to the origin.</summary>
[Collection(SecuredServiceCollection.Name)]
public sealed class SecuredBrowserGuardTests(SecuredServiceFactory factory)
{
    [Fact]
    public async Task AnyHostAndOriginIsAnsweredWithAKeyButTheHubChecksTheOrigin()
    {
        var admin = factory.ClientWithKey(SecuredServiceFactory.AdminKey);
        var request = new HttpRequestMessage(HttpMethod.Get, "/v1/models");
        request.Headers.Host = "adapters.internal.example";
        request.Headers.Add("Origin", "https://tools.example");
        Assert.Equal(HttpStatusCode.OK, (await admin.SendAsync(request)).StatusCode);
        await BrowserGuardTests.AssertUpgradeAsync(factory, "https://attacker.example", SecuredServiceFactory.AdminKey, accepted: false);
        await BrowserGuardTests.AssertUpgradeAsync(factory, "http://localhost", SecuredServiceFactory.AdminKey, accepted: true);
    }
}
