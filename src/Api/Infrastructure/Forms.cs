using Microsoft.AspNetCore.Http.Features;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterService.Api.Infrastructure;

public static class Forms
{
    /// <summary>
    /// Reads a multipart upload of at most <paramref name="maxBytes"/>, or says the error to answer: 413 when its
    /// Content-Length is over the limit (before the body is read; a body that turns out larger also ends in 413), 415
    /// when it is no multipart form, 400 when the body is malformed or truncated.
    /// </summary>
    /// <param name="request">The upload.</param>
    /// <param name="maxBytes">The largest body accepted, for this request (Kestrel's limit and the form's).</param>
    /// <param name="usage">What to send, for the 415 message: e.g. "the file as multipart/form-data with fields 'file' and 'purpose'".</param>
    /// <param name="cancel">Stops reading.</param>
    public static async Task<(IFormCollection? Form, JsonHttpResult<ErrorResponse>? Error)> ReadUploadAsync(
        HttpRequest request, long maxBytes, string usage, CancellationToken cancel)
    {
        if (request.ContentLength > maxBytes)
            return (null, OpenAiErrors.Error(StatusCodes.Status413PayloadTooLarge, $"The upload is larger than the limit of {maxBytes} bytes.", "file", "file_too_large"));
        if (request.HttpContext.Features.Get<IHttpMaxRequestBodySizeFeature>() is { IsReadOnly: false } size) size.MaxRequestBodySize = maxBytes;
        if (!request.HasFormContentType)
            return (null, OpenAiErrors.Error(StatusCodes.Status415UnsupportedMediaType, $"Upload {usage}.", null, "unsupported_media_type"));
        try
        {
            return (await request.ReadFormAsync(new FormOptions { MultipartBodyLengthLimit = maxBytes }, cancel), null);
        }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or IOException && e is not BadHttpRequestException)
        {
            return (null, OpenAiErrors.BadRequest("The multipart body could not be read: it is malformed or truncated."));
        }
    }
}
