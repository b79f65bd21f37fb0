using System.Globalization;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;
using Microsoft.Net.Http.Headers;

namespace AdapterService.Api.Infrastructure;

/// <summary><c>Exports:*</c>: how many model and adapter exports may run at once.</summary>
public sealed class ExportOptions
{
    /// <summary>
    /// Exports (zips, merges, GGUF conversions) running at once in this process; one more answers 429. Each holds a
    /// merged model's weights or a GGUF's tensors while it converts them, and a thread while it streams.
    /// </summary>
    public int MaxConcurrent { get; set; } = 2;
}

/// <summary>The places for exports: one is taken for the whole request, handler and response body, and given back when the response ends.</summary>
public sealed class ExportSlots(IOptions<ExportOptions> options)
{
    readonly SemaphoreSlim slots = new(Math.Max(1, options.Value.MaxConcurrent));

    public int Max { get; } = Math.Max(1, options.Value.MaxConcurrent);

    /// <summary>A place held until the response of <paramref name="context"/> is over, or the 429 to answer when all are taken.</summary>
    public JsonHttpResult<ErrorResponse>? TryTake(HttpContext context)
    {
        if (!slots.Wait(0))
        {
            context.Response.Headers.RetryAfter = "5";
            return OpenAiErrors.Error(StatusCodes.Status429TooManyRequests,
                $"{Max.ToString(CultureInfo.InvariantCulture)} exports are running already, the most at once (Exports:MaxConcurrent). Retry in a few seconds.",
                null, "too_many_exports");
        }
        context.Response.RegisterForDispose(new Slot(slots));
        return null;
    }

    /// <summary>Takes a place outside a request (tests fill the places this way); disposing gives it back.</summary>
    public IDisposable? TryTake() => slots.Wait(0) ? new Slot(slots) : null;

    sealed class Slot(SemaphoreSlim slots) : IDisposable
    {
        int released;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref released, 1) == 0) slots.Release();
        }
    }
}

/// <summary>
/// A folder's files zipped straight into the response (no Content-Length, chunked): memory stays at the zip writer's
/// buffers whatever the model's size, where building the zip first held all of it (and failed past 2 GiB).
/// </summary>
public sealed class ZipFolderResult(string folder, string fileName) : IResult
{
    public async Task ExecuteAsync(HttpContext context)
    {
        // The zip writer finishes each entry (its last deflate block, its sizes) with small synchronous writes.
        if (context.Features.Get<Microsoft.AspNetCore.Http.Features.IHttpBodyControlFeature>() is { } body) body.AllowSynchronousIO = true;
        context.Response.ContentType = "application/zip";
        context.Response.Headers.ContentDisposition = new ContentDispositionHeaderValue("attachment") { FileName = fileName, FileNameStar = fileName }.ToString();
        await SafeZip.WriteAsync(folder, context.Response.Body, context.RequestAborted);
    }
}

/// <summary>Deletes a temporary folder when the response that streams it is over.</summary>
public sealed class DeleteWhenDone(string path) : IDisposable
{
    public void Dispose()
    {
        try { if (Directory.Exists(path)) Directory.Delete(path, recursive: true); }
        catch (IOException) { }   // the blob store's tmp sweep takes what is left
    }
}
