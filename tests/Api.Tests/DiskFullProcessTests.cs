using System.Net;
using System.Text.Json.Nodes;

namespace AdapterService.Api.Tests;

/// <summary>A full disk, for real: the service's data folder on a small tmpfs (inside <c>unshare -m</c>), filled up and freed again.</summary>
public sealed class DiskFullProcessTests
{
    [RootFact]
    public async Task WritesIntoAFullDiskAnswer507LeaveNothingBehindAndTheServiceRecovers()
    {
        using var folder = new TempFolder("adapter-service-enospc-");
        await using var service = await ServiceProcess.StartOnTmpfsAsync(folder.FullName, "256m");
        string data = service.DataFolder(folder.FullName);
        Assert.True(Directory.Exists(Path.Combine(data, "blobs")), "the service's data folder is not reachable through /proc");

        // Fill the tmpfs to its last byte.
        var filler = Path.Combine(data, "filler");
        var chunk = new byte[1 << 20];
        await using (var file = new FileStream(filler, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1 << 16))
        {
            try { while (true) file.Write(chunk); }
            catch (IOException) { }
            try { file.Flush(); } catch (IOException) { }   // what the buffer still held may not fit either
        }
        try
        {
            for (int i = 0; i < 64; i++) File.WriteAllBytes(Path.Combine(data, $"filler-{i}"), new byte[4096]);   // the last pages too
        }
        catch (IOException) { }

        string[] BlobFiles() => Directory.GetFiles(Path.Combine(data, "blobs"), "*", SearchOption.AllDirectories)
            .Select(f => Path.GetRelativePath(Path.Combine(data, "blobs"), f)).Order().ToArray();
        var before = BlobFiles();
        var lines = string.Join("\n", Enumerable.Repeat(Api.ChatLine("Favourite colour?", "Teal"), 2000)) + "\n";   // ~180 KB
        var full = await Api.UploadAsync(service.Http, lines);
        Assert.Equal(HttpStatusCode.InsufficientStorage, full.StatusCode);
        var error = JsonNode.Parse(await full.Content.ReadAsStringAsync())!["error"]!;
        Assert.Equal("server_error", (string?)error["type"]);
        Assert.Equal("The server's storage is full; retry later.", (string?)error["message"]);   // no server path
        Assert.Equal(before, BlobFiles());   // no half-written blob, no temporary left
        var listed = JsonNode.Parse(await service.Http.GetStringAsync("/v1/files"))!["data"]!.AsArray();
        Assert.Empty(listed);

        // Space comes back: the same upload succeeds, and the service answers as before.
        foreach (var f in Directory.GetFiles(data, "filler*")) File.Delete(f);
        var ok = await Api.UploadAsync(service.Http, lines);
        Assert.True(ok.IsSuccessStatusCode, await ok.Content.ReadAsStringAsync());
        Assert.Single(JsonNode.Parse(await service.Http.GetStringAsync("/v1/files"))!["data"]!.AsArray());
        Assert.Equal(HttpStatusCode.OK, (await service.Http.GetAsync("/readyz")).StatusCode);
    }
}

/// <summary>A test that mounts: skipped, saying why, unless the tests run as root.</summary>
public sealed class RootFactAttribute : FactAttribute
{
    public RootFactAttribute()
    {
        if (!Environment.IsPrivilegedProcess) Skip = "mounting a tmpfs (unshare -m, mount -t tmpfs) needs root; these tests run as another user";
    }
}
