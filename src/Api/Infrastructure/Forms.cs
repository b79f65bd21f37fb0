namespace AdapterService.Api.Infrastructure;

public static class Forms
{
    /// <summary>The request's form, or null when the multipart body is malformed (a size-limit error still becomes 413).</summary>
    public static async Task<IFormCollection?> ReadFormAsync(HttpRequest request, CancellationToken cancel)
    {
        try { return await request.ReadFormAsync(cancel); }
        catch (Exception e) when (e is InvalidDataException or InvalidOperationException or IOException && e is not BadHttpRequestException)
        {
            return null;
        }
    }
}
