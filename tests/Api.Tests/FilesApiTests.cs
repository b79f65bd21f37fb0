using System.Net.Http.Json;

namespace AdapterService.Api.Tests;

[Collection(ServiceCollection.Name)]
public sealed class FilesApiTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    [Fact]
    public async Task FilesAreListedNewestFirstDownloadedAndDeleted()
    {
        var lines = new[] { Api.ChatLine("one", "1"), Api.ChatLine("two", "2") };   // files need not be trainable to be stored
        var first = await Api.UploadFileAsync(client, lines);
        var second = await Api.UploadFileAsync(client, lines);

        var list = await Api.JsonAsync(await client.GetAsync("/v1/files?limit=2&purpose=fine-tune"));
        Assert.Equal([second, first], list["data"]!.AsArray().Select(f => (string)f!["id"]!));
        Assert.Equal(second, (string?)list["first_id"]);
        var older = await Api.JsonAsync(await client.GetAsync($"/v1/files?limit=1&purpose=fine-tune&after={second}"));
        Assert.Equal(first, (string?)older["data"]![0]!["id"]);
        var ascending = await Api.JsonAsync(await client.GetAsync("/v1/files?order=asc&purpose=fine-tune"));
        Assert.True(ascending["data"]!.AsArray().Select(f => (string)f!["id"]!).ToList() is var ids && ids.IndexOf(first) < ids.IndexOf(second));

        Assert.Equal(string.Join("\n", lines) + "\n", await client.GetStringAsync($"/v1/files/{first}/content"));

        var deleted = await Api.JsonAsync(await client.DeleteAsync($"/v1/files/{first}"));
        Assert.True((bool)deleted["deleted"]!);
        await Api.AssertErrorAsync(await client.GetAsync($"/v1/files/{first}"), 404, "id");
        await Api.AssertErrorAsync(await client.GetAsync($"/v1/files/{first}/content"), 404, "id");
        await Api.AssertErrorAsync(await client.DeleteAsync($"/v1/files/{first}"), 404, "id");
        Assert.False(File.Exists(Path.Combine(factory.DataDirectory, "blobs", "files", first)));
        await Api.AssertErrorAsync(await client.GetAsync("/v1/files?order=sideways"), 400, "order");
    }

    [Fact]
    public async Task AFileInUseByAnUnfinishedJobCannotBeDeleted()
    {
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Count", "one two three four five six"), 10));
        var job = await Api.CreateJobAsync(client, new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 40 } });
        var jobId = (string)job["id"]!;
        var error = await Api.AssertErrorAsync(await client.DeleteAsync($"/v1/files/{fileId}"), 409, "id");
        Assert.Contains(jobId, (string)error["message"]!);
        Assert.True((await client.GetAsync($"/v1/files/{fileId}")).IsSuccessStatusCode);

        await client.PostAsync($"/v1/fine_tuning/jobs/{jobId}/cancel", null);
        await Api.WaitForFinishAsync(client, jobId);
        Assert.True((await client.DeleteAsync($"/v1/files/{fileId}")).IsSuccessStatusCode);
    }
}
