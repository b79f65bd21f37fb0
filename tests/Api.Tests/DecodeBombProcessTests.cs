using System.Text.Json;
using AdapterService.Core.Data;

namespace AdapterService.Api.Tests;

/// <summary>Decompression bombs against the real executable: its peak memory, read from /proc, stays near the upload's size.</summary>
public sealed class DecodeBombProcessTests(Xunit.Abstractions.ITestOutputHelper log)
{
    /// <summary>Resident memory growth allowed for an upload, as a multiple of its size.</summary>
    const int RssMultiple = 64;

    /// <summary>
    /// 60 lines, each a 16 KB PNG declaring 4096×4096 (16 MiB of pixels, 1 GB for the file): accepted, since they fit
    /// the default budget of decoded bytes (1 GiB), while the process's peak resident memory grows by less than
    /// <see cref="RssMultiple"/>× the upload (it grew by over 1 GB when every line was kept decoded). 70 such lines are
    /// over the budget and refused, naming the line where it ran out.
    /// </summary>
    [Fact]
    public async Task AnUploadOfPngBombsIsCheckedInBoundedMemoryAndHeldToTheDecodeBudget()
    {
        using var folder = new TempFolder("adapter-service-bomb-");
        await using var service = await ServiceProcess.StartAsync(folder.FullName);
        var bomb = Convert.ToBase64String(Png.EncodeGray(4096, 4096, new byte[4096 * 4096]));
        string Lines(int n) => string.Join("\n", Enumerable.Range(0, n).Select(i => JsonSerializer.Serialize(new { image = bomb, label = $"class {i % 3}" })));

        await Api.UploadFileAsync(service.Http, [Api.ChatLine("warm", "up")]);   // the upload path's code and buffers, before measuring
        var accepted = Lines(60);
        ResetPeak(service.ProcessId);
        long before = Status(service.ProcessId, "VmRSS");
        var response = await Api.UploadAsync(service.Http, accepted);
        long grown = Status(service.ProcessId, "VmHWM") - before;
        Assert.True(response.IsSuccessStatusCode, await response.Content.ReadAsStringAsync());
        log.WriteLine($"upload {accepted.Length >> 10} KiB, peak resident memory grew by {grown >> 20} MiB");
        Assert.True(grown < RssMultiple * (long)accepted.Length,
            $"peak resident memory grew by {grown >> 20} MiB for an upload of {accepted.Length >> 10} KiB (allowed: {RssMultiple}×)");

        var refused = await Api.AssertErrorAsync(await Api.UploadAsync(service.Http, Lines(70)), 400, "file");
        Assert.Contains("Line 65: the file's images decode to more than 1073741824 bytes", (string)refused["message"]!);
    }

    /// <summary>Resets the process's peak resident size (VmHWM) to its current size (proc(5), clear_refs value 5).</summary>
    static void ResetPeak(int pid) => File.WriteAllText($"/proc/{pid}/clear_refs", "5");

    static long Status(int pid, string field) =>
        long.Parse(File.ReadLines($"/proc/{pid}/status").Single(l => l.StartsWith(field + ":"))
            .Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
}
