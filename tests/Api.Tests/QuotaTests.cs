using System.Net.Http.Json;
using System.Text.Json.Nodes;
using Microsoft.AspNetCore.Hosting;

namespace AdapterService.Api.Tests;

/// <summary>The service with tiny storage quotas: 4 KiB of files, and adapters and checkpoints that are full after one job.</summary>
public sealed class QuotaServiceFactory : ServiceFactory
{
    public const int MaxFileBytes = 4096;

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        base.ConfigureWebHost(builder);
        builder.UseSetting("Quotas:MaxFileBytes", MaxFileBytes.ToString());
        builder.UseSetting("Quotas:MaxAdapterBytes", "1");
        builder.UseSetting("Quotas:MaxCheckpointBytes", "1");
    }
}

/// <summary>Per-project storage quotas (<c>Quotas:*</c>): usage is visible to the project, and passing a quota is a 413 <c>quota_exceeded</c> that stores nothing.</summary>
public sealed class QuotaTests(QuotaServiceFactory factory) : IClassFixture<QuotaServiceFactory>
{
    readonly HttpClient client = factory.CreateClient();

    async Task<JsonObject> UsageAsync() => await Api.JsonAsync(await client.GetAsync("/v1/projects/proj_default/usage"));

    static async Task AssertQuotaErrorAsync(HttpResponseMessage response, string kind)
    {
        var error = await Api.AssertErrorAsync(response, 413);
        Assert.Equal("quota_exceeded", (string?)error["code"]);
        Assert.Contains($"This project's {kind}", (string?)error["message"]);
    }

    [Fact]
    public async Task UploadsImportsAndJobsStopAtTheProjectsQuotasWhichItCanSee()
    {
        var usage = await UsageAsync();
        Assert.Equal("project.usage", (string?)usage["object"]);
        Assert.Equal(0, (long)usage["files"]!["bytes"]!);
        Assert.Equal(QuotaServiceFactory.MaxFileBytes, (long)usage["files"]!["limit"]!);
        await Api.AssertErrorAsync(await client.GetAsync("/v1/projects/proj_nope/usage"), 404, "project_id");

        // Files: one fits, the next would pass 4 KiB and is refused without being stored.
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Favourite colour?", "Teal"), 10));
        long fileBytes = (long)(await UsageAsync())["files"]!["bytes"]!;
        Assert.InRange(fileBytes, 100, QuotaServiceFactory.MaxFileBytes);
        var big = string.Join("\n", Enumerable.Repeat(Api.ChatLine("Favourite colour?", new string('x', 100)), 40)) + "\n";
        await AssertQuotaErrorAsync(await Api.UploadAsync(client, big), "files");
        Assert.Single((await Api.JsonAsync(await client.GetAsync("/v1/files")))["data"]!.AsArray());
        Assert.Equal(fileBytes, (long)(await UsageAsync())["files"]!["bytes"]!);

        // Checkpoints: a 1-byte quota lets the job train and finish without them, saying why in its events.
        var job = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 1 } });
        var jobId = (string)job["id"]!;
        var done = await Api.WaitForFinishAsync(client, jobId);
        Api.AssertSucceeded(done);
        Assert.Empty((await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/checkpoints")))["data"]!.AsArray());
        var events = (await Api.JsonAsync(await client.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events")))["data"]!.AsArray();
        var skipped = events.Single(e => ((string)e!["message"]!).StartsWith("No checkpoint at step"))!;
        Assert.Equal("warn", (string?)skipped["level"]);
        Assert.Contains("quota", (string?)skipped["message"]);

        // Adapters: the job's adapter is over the 1-byte quota, so neither a new job nor an import has room.
        usage = await UsageAsync();
        Assert.True((long)usage["adapters"]!["bytes"]! > 1);
        Assert.Equal(0, (long)usage["checkpoints"]!["bytes"]!);
        var refusedJob = await client.PostAsJsonAsync("/v1/fine_tuning/jobs", new { model = "tiny-llama-demo", training_file = fileId });
        await AssertQuotaErrorAsync(refusedJob, "adapters");
        var adapterId = (string)(await Api.JsonAsync(await client.GetAsync("/v1/adapters")))["data"]![0]!["id"]!;
        var zip = await client.GetByteArrayAsync($"/v1/adapters/{adapterId}/export");
        using var form = new MultipartFormDataContent
        {
            { new StringContent("tiny-llama-demo"), "model" }, { new ByteArrayContent(zip), "file", "adapter.zip" },
        };
        await AssertQuotaErrorAsync(await client.PostAsync("/v1/adapters/import", form), "adapters");
        Assert.Single((await Api.JsonAsync(await client.GetAsync("/v1/adapters")))["data"]!.AsArray());

        // Deleting frees the room.
        Assert.True((await client.DeleteAsync($"/v1/adapters/{adapterId}")).IsSuccessStatusCode);
        Assert.Equal(0, (long)(await UsageAsync())["adapters"]!["bytes"]!);
        var again = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 1 } });
        await client.PostAsync($"/v1/fine_tuning/jobs/{again["id"]}/cancel", null);
    }
}
