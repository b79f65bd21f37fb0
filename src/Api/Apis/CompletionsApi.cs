using System.Runtime.CompilerServices;
using System.Text.Json;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Inference;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Apis;

/// <summary>A text completion request (OpenAI's fields).</summary>
/// <param name="Model" example="tiny-llama-demo">A base model id or a fine-tuned model name (ft:{base}:{suffix}:{job}).</param>
/// <param name="Prompt" example="Once upon a time">A string, or a list of one string.</param>
/// <param name="MaxTokens" example="16">Tokens to generate (default 16).</param>
/// <param name="Temperature" example="0">0-2; 0 is greedy (default 1).</param>
/// <param name="TopP" example="1">Nucleus sampling mass in (0, 1] (default 1).</param>
/// <param name="Stop">A string or up to 4 strings that end the completion (not included in it).</param>
/// <param name="Stream" example="false">Server-sent events of text_completion chunks, then [DONE].</param>
/// <param name="Seed" example="42">Makes sampling reproducible.</param>
/// <param name="N" example="1">Choices to sample, 1-8 (default 1), each independently from one prefilled prompt; with a seed, reproducible.</param>
/// <param name="PresencePenalty" example="0">-2 to 2: subtracted from the logit of every token generated so far.</param>
/// <param name="FrequencyPenalty" example="0">-2 to 2: subtracted from a token's logit once per time it was generated so far.</param>
/// <param name="LogitBias">Token ids (as strings) to biases from -100 to 100, added to the logits (-100 bans a token, 100 all but forces it).</param>
/// <param name="Logprobs">0-5: return each generated token's log-probability (the model's raw log-softmax, before temperature, penalties and bias) and that many most likely tokens at each position.</param>
/// <param name="StreamOptions">{"include_usage": true}: a last chunk with empty choices and the whole request's usage (stream only).</param>
/// <param name="ResponseFormat">Our extension (OpenAI has it on chat only): {"type": "json_object"} or {"type": "json_schema", ...} constrains the completion to JSON as on chat.</param>
public sealed record CompletionRequest(
    string? Model, JsonElement? Prompt, int? MaxTokens, double? Temperature, double? TopP, JsonElement? Stop, bool? Stream, long? Seed, int? N,
    double? PresencePenalty = null, double? FrequencyPenalty = null, JsonElement? LogitBias = null, int? Logprobs = null, StreamOptions? StreamOptions = null,
    JsonElement? ResponseFormat = null)
    : ISamplingRequest
{
    (int? Top, JsonHttpResult<ErrorResponse>? Error) ISamplingRequest.LogprobsWanted() => Logprobs is < 0 or > 5
        ? (null, OpenAiErrors.BadRequest("logprobs must be between 0 and 5.", "logprobs"))
        : (Logprobs, null);
}

/// <summary>Many completion requests in one call, each naming its own model (base or fine-tuned); run in the same batches.</summary>
/// <param name="Inputs">Up to 256 completion requests (stream is not allowed here).</param>
public sealed record BatchCompletionRequest(IReadOnlyList<CompletionRequest>? Inputs);

/// <summary>
/// OpenAI's legacy completion logprobs: per generated token its text, log-probability, the most likely tokens at its
/// position (with the sampled one, so up to logprobs + 1 entries) and its character offset in the completion's text. A
/// token that is a piece of a multi-byte character is named by its bytes, as OpenAI does: <c>bytes:\xe2\x80</c>.
/// </summary>
public sealed record CompletionLogprobs(IReadOnlyList<string> Tokens, IReadOnlyList<float> TokenLogprobs,
    IReadOnlyList<Dictionary<string, float>> TopLogprobs, IReadOnlyList<int> TextOffset)
{
    /// <summary>From a choice's tokens, the first of them at character <paramref name="offset"/> of the completion; advances the offset.</summary>
    public static CompletionLogprobs? Of(IReadOnlyList<TokenLogprob>? tokens, ref int offset)
    {
        if (tokens is null) return null;
        var offsets = new List<int>(tokens.Count);
        foreach (var t in tokens)
        {
            offsets.Add(offset);
            offset += t.Text.Length;
        }
        return new([.. tokens.Select(t => Name(t.Text, t.Bytes))], [.. tokens.Select(t => t.Logprob)], [.. tokens.Select(Top)], offsets);
    }

    static Dictionary<string, float> Top(TokenLogprob t)
    {
        var top = new Dictionary<string, float>();
        foreach (var a in t.Top) top.TryAdd(Name(a.Text, a.Bytes), a.Logprob);
        top.TryAdd(Name(t.Text, t.Bytes), t.Logprob);
        return top;
    }

    static string Name(string text, byte[] bytes) =>
        text.Contains('\uFFFD') && !bytes.AsSpan().SequenceEqual(System.Text.Encoding.UTF8.GetBytes(text))
            ? "bytes:" + string.Concat(bytes.Select(b => $"\\x{b:x2}")) : text;
}

public sealed record CompletionChoice(string Text, int Index, CompletionLogprobs? Logprobs, string? FinishReason);
public sealed record CompletionResponse(string Id, string Object, long Created, string Model, IReadOnlyList<CompletionChoice> Choices, Usage? Usage);

public static class CompletionsApi
{
    public static IEndpointRouteBuilder MapCompletionsApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/completions", CreateCompletion).WithName("createCompletion").WithErrors(400, 404, 429).WithTags("Completions")
            .WithSummary("Complete a prompt with a base model or a fine-tuned model (ft:...)")
            .WithDescription("`stream: true` answers with server-sent events of `text_completion` chunks, then `data: [DONE]`. max_tokens defaults to 16, as in OpenAI's API.");
        app.MapPost("/v1/completions/batch", CreateBatch).WithName("createCompletionBatch").WithTags("Completions").WithErrors(400, 404, 429)
            .WithSummary("Complete many prompts in one call, each with its own model or adapter")
            .WithDescription("The inputs join the engine's running batches together (one forward pass serves rows with different adapters); answers come back in input order as a list of text_completion objects.");
        return app;
    }

    static async Task<Results<Ok<ListResponse<CompletionResponse>>, JsonHttpResult<ErrorResponse>>> CreateBatch(
        BatchCompletionRequest request, ServiceDbContext db, IBlobStore blobs, InferenceEngine engine, HttpResponse response, IConfiguration configuration,
        CancellationToken cancel)
    {
        if (request.Inputs is not { Count: > 0 and <= 256 } inputs) return OpenAiErrors.BadRequest("inputs must hold 1 to 256 completion requests.", "inputs");
        // One request may take at most half of the engine's places (running + waiting), so that a single call cannot
        // fill the queue and leave every other caller a 429.
        var engineLimits = configuration.GetSection("Inference").Get<InferenceOptions>() ?? new InferenceOptions();
        int share = Math.Max(1, (engineLimits.MaxBatch + engineLimits.MaxQueued) / 2), rows = inputs.Sum(i => Math.Max(1, i?.N ?? 1));
        if (rows > share)
            return OpenAiErrors.BadRequest($"inputs ask for {rows} completions; one batch request may ask for up to {share} (half of Inference:MaxBatch + Inference:MaxQueued), so that other callers keep their places. Split the batch.", "inputs");
        var prepared = new List<Generation.Prepared>();
        for (int i = 0; i < inputs.Count; i++)
        {
            if (inputs[i] is null) return OpenAiErrors.BadRequest($"inputs[{i}] must be a completion request object.", $"inputs[{i}]");
            if (inputs[i].Stream == true) return OpenAiErrors.BadRequest("stream is not supported in a batch.", $"inputs[{i}].stream");
            var (ready, error) = await PrepareAsync(inputs[i], db, blobs, cancel);
            if (ready is null) return Generation.ForInput(error!, i);
            prepared.Add(ready);
        }
        var started = new List<IAsyncEnumerable<GenerationChunk>>();
        using var all = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        foreach (var ready in prepared)
        {
            var (chunks, busy) = await Generation.StartAsync(engine, ready.Request, response, all.Token);
            if (chunks is null)
            {
                all.Cancel();   // the inputs already started stop at their next token
                return busy!;
            }
            started.Add(chunks);
        }
        var results = await Task.WhenAll(started.Select((chunks, i) => Generation.CollectAsync(chunks, prepared[i].Choices)));
        long created = Generation.Now();
        return TypedResults.Ok(new ListResponse<CompletionResponse>("list", results.Select((r, i) => new CompletionResponse(
            Generation.NewId("cmpl-"), "text_completion", created, prepared[i].Model, Choices(r.Choices), r.Usage)).ToList(), false));
    }

    static async Task<Results<Ok<CompletionResponse>, ServerSentEventsResult<string>, JsonHttpResult<ErrorResponse>>> CreateCompletion(
        CompletionRequest request, ServiceDbContext db, IBlobStore blobs, InferenceEngine engine,
        IOptions<Microsoft.AspNetCore.Http.Json.JsonOptions> json, HttpResponse response, CancellationToken cancel)
    {
        var (ready, error) = await PrepareAsync(request, db, blobs, cancel);
        if (ready is null) return error!;
        var (chunks, busy) = await Generation.StartAsync(engine, ready.Request, response, cancel);
        if (chunks is null) return busy!;
        var (id, created) = (Generation.NewId("cmpl-"), Generation.Now());
        if (request.Stream == true)
            return Generation.Stream(Chunks(chunks, ready.Model, id, created, ready.Choices, request.StreamOptions?.IncludeUsage == true),
                json.Value.SerializerOptions);
        var (choices, usage) = await Generation.CollectAsync(chunks, ready.Choices);
        return TypedResults.Ok(new CompletionResponse(id, "text_completion", created, ready.Model, Choices(choices), usage));
    }

    /// <summary>A completion request made ready for the engine: its prompt encoded, its response format a constraint.</summary>
    static async Task<(Generation.Prepared? Ready, JsonHttpResult<ErrorResponse>? Error)> PrepareAsync(CompletionRequest request, ServiceDbContext db,
        IBlobStore blobs, CancellationToken cancel)
    {
        var (grammar, formatError) = ResponseFormats.Parse(request.ResponseFormat);
        if (formatError is not null) return (null, formatError);
        var (ready, error) = await Generation.PrepareAsync(request, (text, _) => text.EncodeCompletion(PromptText(request.Prompt)),
            defaultMaxTokens: 16, db, blobs, cancel);
        if (ready is null) return (null, error);
        var (constrained, unsupported) = ResponseFormats.Constrain(ready.Request, grammar, ready.Model);
        return constrained is null ? (null, unsupported) : (ready with { Request = constrained }, null);
    }

    static List<CompletionChoice> Choices(IReadOnlyList<CollectedChoice> choices) => [.. choices.Select(c =>
    {
        int offset = 0;
        return new CompletionChoice(c.Text, c.Index, CompletionLogprobs.Of(c.Logprobs, ref offset), c.Finish);
    })];

    /// <summary>Each choice's text chunks (with their tokens' logprobs); the usage on the last finish, or, with include_usage, on a last chunk of its own with empty choices.</summary>
    static async IAsyncEnumerable<CompletionResponse> Chunks(IAsyncEnumerable<GenerationChunk> chunks, string model, string id, long created, int n, bool includeUsage)
    {
        var usage = new ChoicesUsage(n);
        var offsets = new int[n];   // each choice's text so far: where its next token starts
        await foreach (var c in chunks)
        {
            usage.Add(c);
            var logprobs = CompletionLogprobs.Of(c.Logprobs, ref offsets[c.Index]);
            yield return new CompletionResponse(id, "text_completion", created, model, [new CompletionChoice(c.Text, c.Index, logprobs, c.FinishReason)],
                !includeUsage && usage.Done ? usage.Total : null);
        }
        if (includeUsage) yield return new CompletionResponse(id, "text_completion", created, model, [], usage.Total);
    }

    /// <summary>A prompt is a string, or a list holding one string.</summary>
    static string PromptText(JsonElement? prompt) => prompt switch
    {
        { ValueKind: JsonValueKind.String } s => s.GetString()!,
        { ValueKind: JsonValueKind.Array } a when a.GetArrayLength() == 1 && a[0].ValueKind == JsonValueKind.String => a[0].GetString()!,
        null or { ValueKind: JsonValueKind.Null } => throw new ArgumentException("Missing required parameter: 'prompt'.", "prompt"),
        _ => throw new ArgumentException("prompt must be a string (or a list of one string).", "prompt"),
    };
}
