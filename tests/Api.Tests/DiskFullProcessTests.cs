using System.Net;
using System.Net.Http.Json;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary>A full disk, for real: the service's data folder on a small tmpfs (inside <c>unshare -m</c>), filled up and freed again.</summary>
public sealed class DiskFullProcessTests(Xunit.Abstractions.ITestOutputHelper output)
{
    readonly System.Diagnostics.Stopwatch clock = System.Diagnostics.Stopwatch.StartNew();
    void Log(string what) => output.WriteLine($"{clock.Elapsed.TotalSeconds:0.0} s: {what}");

    [RootFact]
    public async Task WritesIntoAFullDiskAnswer507LeaveNothingBehindAndTheServiceRecovers()
    {
        using var folder = new TempFolder("adapter-service-enospc-");
        await using var service = await ServiceProcess.StartOnTmpfsAsync(folder.FullName, "256m");
        string data = service.DataFolder(folder.FullName);
        Assert.True(Directory.Exists(Path.Combine(data, "blobs")), "the service's data folder is not reachable through /proc");

        DiskFull.Fill(data);

        var before = DiskFull.BlobFiles(data);
        var lines = string.Join("\n", Enumerable.Repeat(Api.ChatLine("Favourite colour?", "Teal"), 2000)) + "\n";   // ~180 KB
        var full = await Api.UploadAsync(service.Http, lines);
        Assert.Equal(HttpStatusCode.InsufficientStorage, full.StatusCode);
        var error = JsonNode.Parse(await full.Content.ReadAsStringAsync())!["error"]!;
        Assert.Equal("server_error", (string?)error["type"]);
        Assert.Equal("The server's storage is full; retry later.", (string?)error["message"]);   // no server path
        Assert.Equal(before, DiskFull.BlobFiles(data));   // no half-written blob, no temporary left
        var listed = JsonNode.Parse(await service.Http.GetStringAsync("/v1/files"))!["data"]!.AsArray();
        Assert.Empty(listed);

        // Space comes back: the same upload succeeds, and the service answers as before.
        DiskFull.Free(data);
        var ok = await Api.UploadAsync(service.Http, lines);
        Assert.True(ok.IsSuccessStatusCode, await ok.Content.ReadAsStringAsync());
        Assert.Single(JsonNode.Parse(await service.Http.GetStringAsync("/v1/files"))!["data"]!.AsArray());
        Assert.Equal(HttpStatusCode.OK, (await service.Http.GetAsync("/readyz")).StatusCode);
    }

    /// <summary>
    /// A job whose epoch-end save (its trainer state, then its checkpoint) meets a full disk pauses with a storage_full
    /// error that names no path; no half-written state or checkpoint is kept, listed or served, and the state it saved
    /// before stays: resumed once space returns, it continues from that state, makes its checkpoints and succeeds.
    /// The database lies outside the tmpfs (as PostgreSQL does when scaled out), so the writes that fail are exactly the blob store's.
    /// </summary>
    [RootFact]
    public async Task ATrainingJobThatCannotSaveForAFullDiskPausesKeepsItsLastGoodStateAndResumesWhenSpaceReturns()
    {
        using var folder = new TempFolder("adapter-service-enospc-train-");
        await using var service = await ServiceProcess.StartOnTmpfsAsync(folder.FullName, "256m",
            ("ConnectionStrings__Database", $"Data Source={Path.Combine(folder.FullName, "service.db")}"), ("Workers__StateEverySteps", "1000"));
        var http = service.Http;
        string data = service.DataFolder(folder.FullName);
        const int stepsPerEpoch = 24;
        var fileId = await Api.UploadFileAsync(http, Enumerable.Range(0, stepsPerEpoch).Select(i => Api.ChatLine($"Colour {i}?", "Teal")));
        var job = await Api.CreateJobAsync(http, new
        {
            model = "tiny-llama-demo", training_file = fileId, seed = 5, hyperparameters = new { n_epochs = 2, batch_size = 1 },
        });
        string jobId = (string)job["id"]!;

        // Paused while it trains: its state is saved (the last good one) while the disk has room.
        await WaitAsync(async () => (await EventsAsync(http, jobId)).Any(e => (string?)e["type"] == "metrics"), "a first step");
        Assert.True((await http.PostAsync($"/v1/fine_tuning/jobs/{jobId}/pause", null)).IsSuccessStatusCode);
        string states = Path.Combine(data, "blobs", "jobs", jobId, "state");
        await WaitAsync(() => Task.FromResult(Directory.Exists(states) && Directory.GetDirectories(states).Length > 0), "the paused job's saved state");
        await Task.Delay(500);   // its run ends (the lease released) before it is resumed
        int saved = int.Parse(Path.GetFileName(Directory.GetDirectories(states).Single())["step-".Length..]);
        var checkpointsBefore = await CheckpointStepsAsync(http, jobId);
        var modelsBefore = await ModelIdsAsync(http);

        Log("filling");
        DiskFull.Fill(data);
        var blobsBefore = DiskFull.BlobFiles(data);
        Assert.True((await http.PostAsync($"/v1/fine_tuning/jobs/{jobId}/resume", null)).IsSuccessStatusCode);
        Log("resumed on a full disk");
        var paused = await Api.WaitForJobAsync(http, jobId, s => s != "queued" && s != "running");
        Assert.Equal("paused", (string?)paused["status"]);
        var error = paused["error"]!;
        Assert.Equal("storage_full", (string?)error["code"]);
        string message = (string)error["message"]!;
        Assert.Contains("the server's storage is full", message);
        Assert.Contains($"continues from its trainer state saved at step {saved}", message);
        Assert.DoesNotContain("/", message);   // no server path
        Assert.Contains(await EventsAsync(http, jobId), e => (string?)e["level"] == "error" && (string?)e["message"] == message);
        // Nothing half-written: no new state, checkpoint or temporary folder; no checkpoint listed or served.
        Assert.Equal(blobsBefore, DiskFull.BlobFiles(data));
        Assert.Equal(checkpointsBefore, await CheckpointStepsAsync(http, jobId));
        Assert.Equal(modelsBefore, await ModelIdsAsync(http));
        int failedAt = (saved / stepsPerEpoch + 1) * stepsPerEpoch;   // the epoch end that could not be saved
        var checkpointName = Core.Models.ModelNames.Checkpoint(Core.Models.ModelNames.FineTuned("tiny-llama-demo", null, jobId), failedAt);
        Assert.Equal(HttpStatusCode.NotFound, (await http.PostAsJsonAsync("/v1/completions", new { model = checkpointName, prompt = "Colour 1?", max_tokens = 2 })).StatusCode);
        Log("paused");
        // A resume while the disk is still full pauses again the same way.
        Assert.True((await http.PostAsync($"/v1/fine_tuning/jobs/{jobId}/resume", null)).IsSuccessStatusCode);
        Assert.Equal("storage_full", (string?)(await Api.WaitForJobAsync(http, jobId, s => s == "paused"))["error"]!["code"]);

        Log("paused again");
        // Space comes back: resumed, the job continues from the state saved before the disk filled, and succeeds.
        DiskFull.Free(data);
        var resumed = await Api.JsonAsync(await http.PostAsync($"/v1/fine_tuning/jobs/{jobId}/resume", null));
        Assert.Null(resumed["error"]);   // the error went with the pause
        Log("resumed with space");
        var done = await Api.WaitForFinishAsync(http, jobId);
        var events = await EventsAsync(http, jobId);
        Log("finished");
        Assert.True((string?)done["status"] == "succeeded", done.ToJsonString() + "\n" + string.Join("\n", events.Take(8).Select(e => e["message"]))
                                                             + "\nThe service's output:\n" + string.Join("\n", service.Output.Split('\n').TakeLast(80)));
        Assert.Contains(events, e => (string?)e["message"] == $"Fine-tuning job resumed from step {saved}");
        var steps = events.Where(e => (string?)e["type"] == "metrics").Select(e => (int)e["data"]!["step"]!).Order();
        Assert.Equal(Enumerable.Range(1, 2 * stepsPerEpoch), steps);   // each step reported once, none lost to the pauses
        Assert.Equal(new[] { stepsPerEpoch, 2 * stepsPerEpoch }, await CheckpointStepsAsync(http, jobId));   // the epoch end that failed was made again
        Assert.Equal("Teal", await Api.ChatAsync(http, (string)done["fine_tuned_model"]!, "Colour 7?", maxTokens: 4));
        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(data, "blobs", "tmp")));
    }

    /// <summary>
    /// Base-model and adapter imports into a full disk (the database on it too) answer 507 with the error object; nothing
    /// half-imported is listed or left in the blob folder; the same imports succeed once space returns, and serve.
    /// </summary>
    [RootFact]
    public async Task ImportsIntoAFullDiskAnswer507LeaveNothingHalfImportedAndSucceedWhenSpaceReturns()
    {
        using var folder = new TempFolder("adapter-service-enospc-import-");
        await using var service = await ServiceProcess.StartOnTmpfsAsync(folder.FullName, "256m");
        var http = service.Http;
        string data = service.DataFolder(folder.FullName);
        // What to import, from outside the tmpfs: the built-in base's folder, and an adapter trained here and exported.
        string baseFolder = Path.Combine(folder.FullName, "base-to-import");
        Directory.CreateDirectory(baseFolder);
        foreach (var file in Directory.GetFiles(Path.Combine(data, "blobs", "models", "tiny-llama-demo")))
            File.Copy(file, Path.Combine(baseFolder, Path.GetFileName(file)));
        var fileId = await Api.UploadFileAsync(http, Enumerable.Repeat(Api.ChatLine("Favourite colour?", "Teal"), 10));
        var trained = await Api.WaitForFinishAsync(http, (string)(await Api.CreateJobAsync(http, new
        {
            model = "tiny-llama-demo", training_file = fileId, seed = 3, hyperparameters = new { n_epochs = 3, batch_size = 2 },
        }))["id"]!);
        Api.AssertSucceeded(trained);
        var adapters = (await Api.JsonAsync(await http.GetAsync("/v1/adapters")))["data"]!.AsArray();
        var zip = await http.GetByteArrayAsync($"/v1/adapters/{(string)adapters.Single()!["id"]!}/export");

        async Task<HttpResponseMessage> ImportAdapterAsync()
        {
            using var form = new MultipartFormDataContent
            {
                { new ByteArrayContent(zip), "file", "adapter.zip" }, { new StringContent("tiny-llama-demo"), "model" }, { new StringContent("reimported"), "suffix" },
            };
            return await http.PostAsync("/v1/adapters/import", form);
        }
        Task<HttpResponseMessage> ImportBaseAsync() => http.PostAsJsonAsync("/v1/base_models/import", new { path = baseFolder, id = "imported-base" });
        async Task<string[]> BaseIdsAsync() => [.. (await Api.JsonAsync(await http.GetAsync("/v1/base_models")))["data"]!.AsArray().Select(m => (string)m!["id"]!).Order()];
        async Task<int> AdapterCountAsync() => (await Api.JsonAsync(await http.GetAsync("/v1/adapters")))["data"]!.AsArray().Count;
        var basesBefore = await BaseIdsAsync();

        DiskFull.Fill(data);
        var blobsBefore = DiskFull.BlobFiles(data);
        foreach (var full in new[] { await ImportBaseAsync(), await ImportAdapterAsync() })
        {
            var text = await full.Content.ReadAsStringAsync();
            Assert.True(full.StatusCode == HttpStatusCode.InsufficientStorage, $"{full.RequestMessage!.RequestUri}: {(int)full.StatusCode} {text}");
            var error = JsonNode.Parse(text)!["error"]!;
            Assert.Equal("server_error", (string?)error["type"]);
            Assert.Equal("The server's storage is full; retry later.", (string?)error["message"]);
        }
        Assert.Equal(blobsBefore, DiskFull.BlobFiles(data));   // no half-imported folder, no temporary
        Assert.Equal(basesBefore, await BaseIdsAsync());
        Assert.Equal(1, await AdapterCountAsync());

        // Space comes back: the same imports succeed, and both serve.
        DiskFull.Free(data);
        var importedBase = await ImportBaseAsync();
        Assert.True(importedBase.IsSuccessStatusCode, await importedBase.Content.ReadAsStringAsync());
        var importedAdapter = await Api.JsonAsync(await ImportAdapterAsync());
        Assert.Equal("adapter", (string?)importedAdapter["object"]);
        Assert.Contains("imported-base", await BaseIdsAsync());
        Assert.Equal(2, await AdapterCountAsync());
        Assert.Equal("Teal", await Api.ChatAsync(http, (string)importedAdapter["model"]!, "Favourite colour?", maxTokens: 4));
        var completion = await http.PostAsJsonAsync("/v1/completions", new { model = "imported-base", prompt = "Hello", max_tokens = 4, temperature = 0 });
        Assert.True(completion.IsSuccessStatusCode, await completion.Content.ReadAsStringAsync());
        Assert.Empty(Directory.GetFileSystemEntries(Path.Combine(data, "blobs", "tmp")));
    }

    static async Task<List<JsonNode>> EventsAsync(HttpClient http, string jobId) =>
        [.. (await Api.JsonAsync(await http.GetAsync($"/v1/fine_tuning/jobs/{jobId}/events?limit=1000")))["data"]!.AsArray().Select(e => e!)];

    static async Task<int[]> CheckpointStepsAsync(HttpClient http, string jobId) =>
        [.. (await Api.JsonAsync(await http.GetAsync($"/v1/fine_tuning/jobs/{jobId}/checkpoints")))["data"]!.AsArray().Select(c => (int)c!["step_number"]!).Order()];

    static async Task<string[]> ModelIdsAsync(HttpClient http) =>
        [.. (await Api.JsonAsync(await http.GetAsync("/v1/models")))["data"]!.AsArray().Select(m => (string)m!["id"]!).Order()];

    static async Task WaitAsync(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow + TimeSpan.FromMinutes(2);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"waited 2 minutes for {what}");
            await Task.Delay(50);
        }
    }
}

/// <summary>Fills a service's data folder (on its tmpfs) to the last byte with filler files, and frees it again.</summary>
static class DiskFull
{
    public static void Fill(string data)
    {
        var chunk = new byte[1 << 20];
        try
        {
            using var file = new FileStream(Path.Combine(data, "filler"), FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16);
            while (true) file.Write(chunk);
        }
        catch (IOException) { }   // ENOSPC, from a write or from what the buffer still held when closing
        try
        {
            for (int i = 0; i < 64; i++) File.WriteAllBytes(Path.Combine(data, $"filler-{i}"), new byte[4096]);   // the last pages too
        }
        catch (IOException) { }
    }

    public static void Free(string data)
    {
        foreach (var f in Directory.GetFiles(data, "filler*")) File.Delete(f);
    }

    /// <summary>Every file under the blob folder, relative to it, sorted.</summary>
    public static string[] BlobFiles(string data) => Directory.GetFiles(Path.Combine(data, "blobs"), "*", SearchOption.AllDirectories)
        .Select(f => Path.GetRelativePath(Path.Combine(data, "blobs"), f)).Order().ToArray();
}

/// <summary>A test that mounts: skipped, saying why, unless the tests run as root.</summary>
public sealed class RootFactAttribute : FactAttribute
{
    public RootFactAttribute()
    {
        if (!Environment.IsPrivilegedProcess) Skip = "mounting a tmpfs (unshare -m, mount -t tmpfs) needs root; these tests run as another user";
    }
}
