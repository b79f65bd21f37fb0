using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using AdapterService.Api.Infrastructure;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Configuration;

namespace AdapterService.Api.Tests;

/// <summary>Without an admin key only loopback addresses may be listened on; with one, any.</summary>
public sealed class LoopbackTests
{
    static IConfiguration Config(params (string Key, string Value)[] settings) =>
        new ConfigurationBuilder().AddInMemoryCollection(settings.ToDictionary(s => s.Key, s => (string?)s.Value)).Build();

    [Theory]
    [InlineData("http://127.0.0.1:5080")]
    [InlineData("http://localhost:5080")]
    [InlineData("http://[::1]:5080")]
    [InlineData("http://127.0.0.2:80;https://localhost:5443")]
    public void LoopbackAddressesNeedNoKey(string urls) => Auth.RequireLoopbackWithoutKeys(Config(("urls", urls)));

    [Theory]
    [InlineData("http://0.0.0.0:5080")]
    [InlineData("http://*:5080")]
    [InlineData("http://+:80")]
    [InlineData("http://[::]:5080")]
    [InlineData("http://127.0.0.1:5080;http://192.168.1.5:5080")]
    [InlineData("http://example.com:5080")]
    public void OtherAddressesNeedAKey(string urls)
    {
        var refused = Assert.Throws<InvalidOperationException>(() => Auth.RequireLoopbackWithoutKeys(Config(("urls", urls))));
        Assert.Contains("Auth:AdminKey", refused.Message);
        Auth.RequireLoopbackWithoutKeys(Config(("urls", urls), ("Auth:AdminKey", "k")));
    }

    [Fact]
    public void KestrelEndpointsAreCheckedToo() =>
        Assert.Throws<InvalidOperationException>(() => Auth.RequireLoopbackWithoutKeys(Config(("Kestrel:Endpoints:Http:Url", "http://0.0.0.0:1"))));

    [Theory]
    [InlineData("http://127.0.0.1:5080", false)]
    [InlineData("http://localhost:5080", false)]
    [InlineData("http://[::1]:5080", false)]
    [InlineData("http://unix:/run/adapter.sock", false)]
    [InlineData("http://[::]:8080", true)]
    [InlineData("http://0.0.0.0:8080", true)]
    [InlineData("http://192.0.2.7:8080", true)]
    public void BoundAddressesAreCheckedAfterStart(string bound, bool open)
    {
        Assert.Equal(open, Auth.OpenListeners([bound], new AuthOptions()).Count == 1);
        Assert.Empty(Auth.OpenListeners([bound], new AuthOptions { AdminKey = "k" }));
    }

    /// <summary>
    /// A listener on every interface (as ASPNETCORE_HTTP_PORTS makes one) without keys: a connection that arrives on a
    /// non-loopback address is dropped before any HTTP is read, one on loopback is served.
    /// </summary>
    [Fact]
    public async Task WithoutKeysConnectionsFromOtherInterfacesAreDropped()
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.WebHost.UseUrls("http://0.0.0.0:0");
        builder.RefuseOpenListenersWithoutKeys();
        await using var app = builder.Build();
        app.MapGet("/", () => "served");
        await app.StartAsync();
        int port = new Uri(app.Urls.Single()).Port;
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(10) };
        Assert.Equal("served", await http.GetStringAsync($"http://127.0.0.1:{port}/"));
        var other = NetworkInterface.GetAllNetworkInterfaces().Where(n => n.OperationalStatus == OperationalStatus.Up)
            .SelectMany(n => n.GetIPProperties().UnicastAddresses).Select(a => a.Address)
            .FirstOrDefault(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
        if (other is not null)   // a machine with a network interface (CI's and the dev container have one)
            await Assert.ThrowsAsync<HttpRequestException>(() => http.GetStringAsync($"http://{other}:{port}/"));
        await app.StopAsync();
    }
}
