using AdapterService.Core.Storage;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterService.Api.Tests;

/// <summary>A training file is read once: job creation checks it from the facts stored at upload and the tokens stored per base.</summary>
[Collection(ServiceCollection.Name)]
public sealed class StoredFileFactsTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    [Fact]
    public async Task JobCreationUsesStoredFactsAndTheWorkerStillReadsTheFile()
    {
        var fileId = await Api.UploadFileAsync(client, Enumerable.Repeat(Api.ChatLine("Capital of France?", "Paris"), 10));
        Assert.Equal(("chat", 10), factory.Query(db => db.Files.Where(f => f.Id == fileId).Select(f => ValueTuple.Create(f.Format, f.ExampleCount)).Single()));
        // A row from before facts were stored is measured on first use.
        factory.Query(db => db.Files.Where(f => f.Id == fileId).ExecuteUpdate(s => s.SetProperty(f => f.Format, (string?)null)));

        var request = new { model = "tiny-llama-demo", training_file = fileId, hyperparameters = new { n_epochs = 1 } };
        var first = await Api.CreateJobAsync(client, request);
        await client.PostAsync($"/v1/fine_tuning/jobs/{first["id"]}/cancel", null);
        await Api.WaitForFinishAsync(client, (string)first["id"]!);
        long tokens = (long)first["training_file_tokens"]!;
        Assert.Equal("chat", factory.Query(db => db.Files.Single(f => f.Id == fileId).Format));
        Assert.Equal(tokens, factory.Query(db => db.FileTokenCounts.Single(c => c.FileId == fileId && c.BaseModel == "tiny-llama-demo").Tokens));

        // With its bytes broken, the file still passes job creation (nothing there reads it); the worker, which must, fails the job cleanly.
        var blobs = factory.Services.GetRequiredService<IBlobStore>();
        File.WriteAllText(blobs.Resolve(factory.Query(db => db.Files.Single(f => f.Id == fileId).BlobPath)), "not json\n");
        var second = await Api.CreateJobAsync(client, request);
        Assert.Equal(tokens, (long)second["training_file_tokens"]!);
        var failed = await Api.WaitForFinishAsync(client, (string)second["id"]!);
        Assert.Equal("failed", (string?)failed["status"]);
        Assert.StartsWith("Line 1: the line is not valid JSON", (string?)failed["error"]!["message"]);

        // Deleting the file drops its token counts.
        Assert.True((await client.DeleteAsync($"/v1/files/{fileId}")).IsSuccessStatusCode);
        Assert.Equal(0, factory.Query(db => db.FileTokenCounts.Count(c => c.FileId == fileId)));
    }
}
