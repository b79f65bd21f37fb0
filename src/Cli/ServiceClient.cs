using System.ClientModel;
using System.ClientModel.Primitives;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using OpenAI;

namespace AdapterService.Cli;

/// <summary>An error to print and exit with: the API's own message (OpenAI's <c>error.message</c>), or a local one.</summary>
public sealed class CliException(string message) : Exception(message);

/// <summary>
/// The service's public HTTP API: the official OpenAI SDK where OpenAI's API covers the call, plain HTTP with JSON for
/// our extensions (the <c>adapter</c> object, pause and resume, exports, adapters).
/// </summary>
public sealed class ServiceClient : IDisposable
{
    public Uri BaseUrl { get; }
    public string? ApiKey { get; }
    public HttpClient Http { get; }
    public OpenAIClient OpenAI { get; }

    public ServiceClient(string baseUrl, string? apiKey)
    {
        if (!Uri.TryCreate(baseUrl.TrimEnd('/') + "/", UriKind.Absolute, out var uri) || uri.Scheme is not ("http" or "https"))
            throw new CliException($"ADAPTERS_BASE_URL is not an http(s) URL: {baseUrl}");
        BaseUrl = uri;
        ApiKey = string.IsNullOrWhiteSpace(apiKey) ? null : apiKey.Trim();
        Http = new HttpClient { BaseAddress = uri, Timeout = Timeout.InfiniteTimeSpan };
        if (ApiKey is not null) Http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", ApiKey);
        var options = new OpenAIClientOptions { Endpoint = new Uri(uri, "v1"), NetworkTimeout = TimeSpan.FromMinutes(10) };
        // The SDK wants a credential; without a key its header is taken off again, so the service sees no key (and says so).
        if (ApiKey is null) options.AddPolicy(new NoKeyPolicy(), PipelinePosition.BeforeTransport);
        OpenAI = new OpenAIClient(new ApiKeyCredential(ApiKey ?? "none"), options);
    }

    sealed class NoKeyPolicy : PipelinePolicy
    {
        public override void Process(PipelineMessage message, IReadOnlyList<PipelinePolicy> pipeline, int currentIndex)
        {
            message.Request.Headers.Remove("Authorization");
            ProcessNext(message, pipeline, currentIndex);
        }

        public override ValueTask ProcessAsync(PipelineMessage message, IReadOnlyList<PipelinePolicy> pipeline, int currentIndex)
        {
            message.Request.Headers.Remove("Authorization");
            return ProcessNextAsync(message, pipeline, currentIndex);
        }
    }

    /// <summary>From ADAPTERS_BASE_URL (default the service's own default, http://127.0.0.1:5080) and ADAPTERS_API_KEY, else OPENAI_API_KEY.</summary>
    public static ServiceClient FromEnvironment() => new(
        Environment.GetEnvironmentVariable("ADAPTERS_BASE_URL") is { Length: > 0 } url ? url : "http://127.0.0.1:5080",
        Environment.GetEnvironmentVariable("ADAPTERS_API_KEY") is { Length: > 0 } key ? key : Environment.GetEnvironmentVariable("OPENAI_API_KEY"));

    public Task<JsonNode> GetAsync(string path, CancellationToken cancel) => SendAsync(HttpMethod.Get, path, null, cancel);

    public Task<JsonNode> PostAsync(string path, JsonNode? body, CancellationToken cancel) => SendAsync(HttpMethod.Post, path, body, cancel);

    async Task<JsonNode> SendAsync(HttpMethod method, string path, JsonNode? body, CancellationToken cancel)
    {
        using var request = new HttpRequestMessage(method, path);
        if (body is not null) request.Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json");
        using var response = await SendAsync(request, HttpCompletionOption.ResponseContentRead, cancel);
        var text = await response.Content.ReadAsStringAsync(cancel);
        try { return JsonNode.Parse(text) ?? throw new JsonException(); }
        catch (JsonException) { throw new CliException($"{method} {path}: the answer is not JSON"); }
    }

    /// <summary>Sends and answers a successful response; an error answer becomes a <see cref="CliException"/> with the API's message.</summary>
    public async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, HttpCompletionOption completion, CancellationToken cancel)
    {
        HttpResponseMessage response;
        try { response = await Http.SendAsync(request, completion, cancel); }
        catch (HttpRequestException e) { throw Unreachable(e); }
        if (response.IsSuccessStatusCode) return response;
        using (response) throw Error((int)response.StatusCode, await response.Content.ReadAsStringAsync(cancel));
    }

    public CliException Unreachable(Exception e) => new($"cannot reach the service at {BaseUrl} ({e.Message}); set ADAPTERS_BASE_URL");

    /// <summary>OpenAI's error object's message (and code), or the status when the body is not one.</summary>
    public CliException Error(int status, string body)
    {
        string message = $"HTTP {status}";
        try
        {
            if (JsonNode.Parse(body)?["error"] is JsonObject error)
            {
                message = error["message"]?.GetValue<string>() ?? message;
                if (error["code"]?.GetValue<string>() is { Length: > 0 } code) message += $" ({code})";
            }
        }
        catch (JsonException) { }
        if (status == 401 && ApiKey is null) message += "; set ADAPTERS_API_KEY (or OPENAI_API_KEY)";
        return new CliException(message);
    }

    /// <summary>What the SDK throws, as the API's message.</summary>
    public CliException Error(ClientResultException e) =>
        e.GetRawResponse() is { } response ? Error(response.Status, response.Content.ToString())
        : e.InnerException is HttpRequestException inner ? Unreachable(inner) : new CliException(e.Message);

    public void Dispose() => Http.Dispose();
}
