using System.Net.Http.Headers;
using System.Net.Http.Json;
using Microsoft.AspNetCore.Hosting;

namespace AdapterService.Api.Tests;

/// <summary>The service with auth on (an admin key configured), shared by the tests of tenants and fuzzing.</summary>
public sealed class SecuredServiceFactory : ServiceFactory
{
    public const string AdminKey = "test-admin-key-0123456789";
    public const int MaxActiveJobs = 2;

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        base.ConfigureWebHost(builder);
        builder.UseSetting("Auth:AdminKey", AdminKey);
        builder.UseSetting("Limits:MaxActiveJobsPerProject", MaxActiveJobs.ToString());
        builder.UseSetting("Limits:RequestsPerMinute", "1000000");   // the fuzz tests send thousands of requests a minute
    }

    /// <summary>A client that sends <paramref name="key"/> as its Bearer key (none when null).</summary>
    public HttpClient ClientWithKey(string? key)
    {
        var client = CreateClient();
        if (key is not null) client.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return client;
    }

    /// <summary>Creates a project with one API key (through the admin API); returns the project id and the key's secret.</summary>
    public async Task<(string ProjectId, string Key)> NewProjectAsync(string name)
    {
        var admin = ClientWithKey(AdminKey);
        var project = await Api.JsonAsync(await admin.PostAsJsonAsync("/v1/organization/projects", new { name }));
        var projectId = (string)project["id"]!;
        var key = await Api.JsonAsync(await admin.PostAsJsonAsync($"/v1/organization/projects/{projectId}/api_keys", new { name = "test" }));
        return (projectId, (string)key["value"]!);
    }
}

[CollectionDefinition(Name)]
public sealed class SecuredServiceCollection : ICollectionFixture<SecuredServiceFactory>
{
    public const string Name = "secured service";
}
