using Microsoft.AspNetCore.Http.Features;

namespace AdapterService.Api.Infrastructure;

public static class Forms
{
    /// <summary>The request's form, or null when the multipart body is malformed (a size-limit error still becomes 413).</summary>
    /// <param name="request">The multipart request.</param>
    /// <param name="cancel">Stops reading.</param>
    /// <param name="maxBytes">A larger body limit than Files:MaxUploadBytes, for this request only.</param>
    public static async Task<IFormCollection?> ReadFormAsync(HttpRequest request, CancellationToken cancel, long? maxBytes = null)
    {
        try { return maxBytes is { } max ? await request.ReadFormAsync(new FormOptions { MultipartBodyLengthLimit = max }, cancel) : await request.ReadFormAsync(cancel); }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or IOException && e is not BadHttpRequestException)
        {
            return null;
        }
    }
}
