using System.IO.Compression;
using System.Net;
using AdapterService.Api.Infrastructure;
using Microsoft.Extensions.DependencyInjection;

namespace AdapterService.Api.Tests;

/// <summary>Exports are zipped into the response as they are read, and no more than <c>Exports:MaxConcurrent</c> run at once.</summary>
[Collection(ServiceCollection.Name)]
public sealed class ExportStreamingTests(ServiceFactory factory)
{
    readonly HttpClient client = factory.CreateClient();

    [Fact]
    public async Task ExportsOverTheBoundAreRefusedAndAnExportStreams()
    {
        var exports = factory.Services.GetRequiredService<ExportSlots>();
        var held = Enumerable.Range(0, exports.Max).Select(_ => exports.TryTake()!).ToList();   // as many exports as may run, running
        Assert.All(held, Assert.NotNull);
        var busy = await client.GetAsync("/v1/models/tiny-llama-demo/export");
        var error = await Api.AssertErrorAsync(busy, 429);
        Assert.Equal("too_many_exports", (string?)error["code"]);
        Assert.Equal("5", busy.Headers.RetryAfter?.ToString());
        await Api.AssertErrorAsync(await client.GetAsync("/v1/adapters/adapter-nope/export"), 404);   // a missing one is still a 404

        held[0].Dispose();
        using (var response = await client.GetAsync("/v1/models/tiny-llama-demo/export", HttpCompletionOption.ResponseHeadersRead))
        {
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            Assert.Equal("application/zip", response.Content.Headers.ContentType?.MediaType);
            Assert.Null(response.Content.Headers.ContentLength);   // streamed: the length is not known before the zip is written
            Assert.Equal("tiny-llama-demo.zip", response.Content.Headers.ContentDisposition?.FileName?.Trim('"'));
            using var zip = new ZipArchive(new MemoryStream(await response.Content.ReadAsByteArrayAsync()));
            Assert.Contains(zip.Entries, e => e.FullName == "config.json");
            Assert.Contains(zip.Entries, e => e.FullName == "model.safetensors" && e.Length > 0);
        }
        // Its place is given back once the response is over, so the next export finds one.
        var deadline = DateTime.UtcNow.AddSeconds(10);
        IDisposable? again;
        while ((again = exports.TryTake()) is null && DateTime.UtcNow < deadline) await Task.Delay(20);
        Assert.NotNull(again);
        again!.Dispose();
        foreach (var slot in held) slot.Dispose();
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/v1/models/tiny-llama-demo/export")).StatusCode);
    }

    /// <summary>The zip writer's memory does not grow with the folder: 48 MB of incompressible weights allocate a few MB.</summary>
    [Fact]
    public async Task ZippingAFolderIntoAStreamAllocatesLittleWhateverItsSize()
    {
        var folder = Directory.CreateTempSubdirectory("export-stream-").FullName;
        try
        {
            var random = new Random(7);
            var chunk = new byte[1 << 20];
            await using (var file = File.Create(Path.Combine(folder, "model.safetensors")))
                for (int i = 0; i < 48; i++)
                {
                    random.NextBytes(chunk);
                    await file.WriteAsync(chunk);
                }
            await File.WriteAllTextAsync(Path.Combine(folder, "config.json"), "{}");
            var sink = new CountingSink();
            long before = GC.GetTotalAllocatedBytes(precise: true);
            await SafeZip.WriteAsync(folder, sink, CancellationToken.None);
            long allocated = GC.GetTotalAllocatedBytes(precise: true) - before;
            Assert.True(sink.Written > 48L << 20, $"{sink.Written} bytes written");   // random bytes do not compress
            Assert.True(allocated < 12L << 20, $"zipping 48 MB allocated {allocated / (1 << 20)} MB");   // a zip built in memory first: over 100 MB
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>A response body's shape: write-only, unseekable, keeping nothing.</summary>
    sealed class CountingSink : Stream
    {
        public long Written { get; private set; }
        public override bool CanRead => false;
        public override bool CanSeek => false;
        public override bool CanWrite => true;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => throw new NotSupportedException(); set => throw new NotSupportedException(); }
        public override void Flush() { }
        public override int Read(byte[] buffer, int offset, int count) => throw new NotSupportedException();
        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => Written += count;
        public override ValueTask WriteAsync(ReadOnlyMemory<byte> buffer, CancellationToken cancel = default)
        {
            Written += buffer.Length;
            return ValueTask.CompletedTask;
        }
    }
}
