using AdapterService.Api.Infrastructure;
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
}
