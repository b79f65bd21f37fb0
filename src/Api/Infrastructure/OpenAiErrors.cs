using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Diagnostics;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterService.Api.Infrastructure;

/// <summary>OpenAI's error object: <c>{"error": {"message", "type", "param", "code"}}</c>.</summary>
public sealed record ErrorResponse(ErrorBody Error);

public sealed record ErrorBody(string Message, string Type, string? Param, string? Code);

public static class OpenAiErrors
{
    public static JsonHttpResult<ErrorResponse> Error(int status, string message, string? param = null, string? code = null) =>
        TypedResults.Json(new ErrorResponse(new ErrorBody(message, TypeOf(status), param, code)), statusCode: status);

    static string TypeOf(int status) => status switch
    {
        StatusCodes.Status429TooManyRequests => "rate_limit_error",
        >= 500 => "server_error",
        _ => "invalid_request_error",
    };

    public static JsonHttpResult<ErrorResponse> BadRequest(string message, string? param = null, string? code = null) =>
        Error(StatusCodes.Status400BadRequest, message, param, code);

    public static JsonHttpResult<ErrorResponse> NotFound(string message, string? param = null, string? code = "not_found") =>
        Error(StatusCodes.Status404NotFound, message, param, code);

    /// <summary>Documents the error object for the given status codes in the OpenAPI document.</summary>
    public static RouteHandlerBuilder WithErrors(this RouteHandlerBuilder endpoint, params int[] statusCodes)
    {
        foreach (var status in statusCodes) endpoint.Produces<ErrorResponse>(status);
        return endpoint;
    }

    /// <summary>
    /// Every error the framework raises itself (unreadable JSON, a wrong content type, an unknown route, an unexpected
    /// exception) also answers with the error object, with the right status code.
    /// </summary>
    public static WebApplication UseOpenAiErrors(this WebApplication app)
    {
        app.UseExceptionHandler(errorApp => errorApp.Run(async context =>
        {
            var error = context.Features.Get<IExceptionHandlerFeature>()?.Error;
            var (status, message) = error switch
            {
                BadHttpRequestException bad => (bad.StatusCode, bad.InnerException is System.Text.Json.JsonException json
                    ? $"The request body is not valid JSON: {json.Message}" : bad.Message),
                // Reading a string of the request's JSON that holds invalid UTF-8 or an unpaired surrogate escape ("\ud800").
                InvalidOperationException { TargetSite.DeclaringType.Namespace: "System.Text.Json" } => (StatusCodes.Status400BadRequest,
                    "The request body holds a string that is not valid Unicode text (invalid UTF-8 or an unpaired surrogate escape)."),
                // A pattern of the model's tokenizer.json (TextPattern.MatchTimeout) backtracking on this text.
                System.Text.RegularExpressions.RegexMatchTimeoutException => (StatusCodes.Status400BadRequest,
                    "The model's tokenizer could not split this text in time (a regex of its tokenizer.json backtracks on it); send different text or use another model."),
                // The server's fault, not the caller's, but said plainly: an operator can act on it.
                _ when StorageFullException.IsCause(error) => (StatusCodes.Status507InsufficientStorage, StorageFullException.Text),
                UnauthorizedAccessException => (StatusCodes.Status500InternalServerError, "The server may not write to its storage (permission denied)."),
                _ => (StatusCodes.Status500InternalServerError, "The server had an error while processing your request."),
            };
            await Error(status, message).ExecuteAsync(context);
        }));
        app.UseStatusCodePages(async status =>
        {
            var context = status.HttpContext;
            if (context.Response.ContentLength is null && !context.Response.HasStarted && IsApiRoute(context.Request.Path))
                await Error(context.Response.StatusCode, context.Response.StatusCode == 404
                    ? $"Unknown request URL: {context.Request.Method} {context.Request.Path}." : "The request could not be handled.").ExecuteAsync(context);
        });
        return app;
    }

    /// <summary>The routes that answer as the API does (error objects, a project's rate limit): /v1 and vLLM's /tokenize and /detokenize.</summary>
    public static bool IsApiRoute(PathString path) =>
        path.StartsWithSegments("/v1") || path.StartsWithSegments("/tokenize") || path.StartsWithSegments("/detokenize");
}
