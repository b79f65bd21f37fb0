using System.Runtime.CompilerServices;
using System.Text.Json;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Inference;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;
using Microsoft.Extensions.Options;

namespace AdapterService.Api.Apis;

public sealed record ChatMessageDto(string? Role, string? Content);

/// <summary>A chat completion request (OpenAI's fields, and vLLM's for the chat template).</summary>
/// <param name="Model" example="tiny-llama-demo">A base model id or a fine-tuned model name (ft:{base}:{suffix}:{job}).</param>
/// <param name="Messages">The conversation: roles system, developer, user, assistant, tool; content a string or a list of text parts; assistant tool_calls and tool messages' tool_call_id as OpenAI writes them.</param>
/// <param name="MaxTokens">Tokens to generate; default: up to the context length.</param>
/// <param name="MaxCompletionTokens">Newer name of max_tokens; wins when both are given.</param>
/// <param name="Temperature" example="0">0-2; 0 is greedy (default 1).</param>
/// <param name="TopP" example="1">Nucleus sampling mass in (0, 1] (default 1).</param>
/// <param name="Stop">A string or up to 4 strings that end the answer (not included in it).</param>
/// <param name="Stream" example="false">Server-sent events of chat.completion.chunk objects, then [DONE].</param>
/// <param name="Seed" example="42">Makes sampling reproducible.</param>
/// <param name="N" example="1">Choices to sample, 1-8 (default 1), each independently from one prefilled prompt; with a seed, reproducible.</param>
/// <param name="Tools">OpenAI's tool definitions, passed to the chat template (the model's template decides how they are written).</param>
/// <param name="ChatTemplate">vLLM's field: a Jinja chat template (or the name of one of the model's templates) to render with instead of the model's.</param>
/// <param name="ChatTemplateKwargs">vLLM's field: extra template variables, such as {"enable_thinking": false} for Qwen 3.</param>
/// <param name="PresencePenalty" example="0">-2 to 2: subtracted from the logit of every token generated so far.</param>
/// <param name="FrequencyPenalty" example="0">-2 to 2: subtracted from a token's logit once per time it was generated so far.</param>
/// <param name="LogitBias">Token ids (as strings) to biases from -100 to 100, added to the logits (-100 bans a token, 100 all but forces it).</param>
/// <param name="Logprobs" example="false">Return each generated token's log-probability (the model's raw log-softmax, before temperature, penalties and bias).</param>
/// <param name="TopLogprobs">0-20 most likely tokens to return at each position with their log-probabilities; needs logprobs true.</param>
/// <param name="StreamOptions">{"include_usage": true}: a last chunk with empty choices and the whole request's usage (stream only).</param>
/// <param name="ResponseFormat">{"type": "text"} (default), {"type": "json_object"} or {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}: the answer is constrained to JSON (of the schema); docs/API.md lists the supported JSON Schema subset.</param>
public sealed record ChatCompletionRequest(
    string? Model, JsonElement? Messages, int? MaxTokens, int? MaxCompletionTokens, double? Temperature, double? TopP,
    JsonElement? Stop, bool? Stream, long? Seed, int? N, JsonElement? Tools = null, string? ChatTemplate = null, JsonElement? ChatTemplateKwargs = null,
    double? PresencePenalty = null, double? FrequencyPenalty = null, JsonElement? LogitBias = null, bool? Logprobs = null, int? TopLogprobs = null,
    StreamOptions? StreamOptions = null, JsonElement? ResponseFormat = null)
    : ISamplingRequest
{
    int? ISamplingRequest.MaxTokens => MaxCompletionTokens ?? MaxTokens;

    (int? Top, JsonHttpResult<ErrorResponse>? Error) ISamplingRequest.LogprobsWanted()
    {
        if (TopLogprobs is < 0 or > 20) return (null, OpenAiErrors.BadRequest("top_logprobs must be between 0 and 20.", "top_logprobs"));
        if (TopLogprobs is not null && Logprobs != true) return (null, OpenAiErrors.BadRequest("top_logprobs needs logprobs to be true.", "top_logprobs"));
        return (Logprobs == true ? TopLogprobs ?? 0 : null, null);
    }
}

/// <summary>OpenAI's chat logprobs: one entry per generated token.</summary>
public sealed record ChatLogprobs(IReadOnlyList<ChatTokenLogprob> Content, object? Refusal)
{
    public static ChatLogprobs? Of(IReadOnlyList<TokenLogprob>? tokens) => tokens is null ? null : new([.. tokens.Select(t =>
        new ChatTokenLogprob(t.Text, t.Logprob, Bytes(t.Bytes), [.. t.Top.Select(a => new ChatTopLogprob(a.Text, a.Logprob, Bytes(a.Bytes)))]))], null);

    static int[] Bytes(byte[] bytes) => [.. bytes.Select(b => (int)b)];   // a JSON list of integers, as OpenAI writes them
}
public sealed record ChatTokenLogprob(string Token, float Logprob, IReadOnlyList<int> Bytes, IReadOnlyList<ChatTopLogprob> TopLogprobs);
public sealed record ChatTopLogprob(string Token, float Logprob, IReadOnlyList<int> Bytes);

public sealed record ChatChoice(int Index, ChatMessageDto Message, ChatLogprobs? Logprobs, string FinishReason);
public sealed record ChatCompletionResponse(string Id, string Object, long Created, string Model, IReadOnlyList<ChatChoice> Choices, Usage Usage);
public sealed record ChatDelta(string? Role, string? Content);
public sealed record ChatChunkChoice(int Index, ChatDelta Delta, ChatLogprobs? Logprobs, string? FinishReason);
public sealed record ChatCompletionChunk(string Id, string Object, long Created, string Model, IReadOnlyList<ChatChunkChoice> Choices, Usage? Usage);

public static class ChatCompletionsApi
{
    public static IEndpointRouteBuilder MapChatCompletionsApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/chat/completions", CreateChatCompletion).WithName("createChatCompletion").WithErrors(400, 404, 429).WithTags("Chat")
            .WithSummary("Chat with a base model or a fine-tuned model (ft:...)")
            .WithDescription("`stream: true` answers with server-sent events of `chat.completion.chunk` objects, then `data: [DONE]`.");
        return app;
    }

    static async Task<Results<Ok<ChatCompletionResponse>, ServerSentEventsResult<string>, JsonHttpResult<ErrorResponse>>> CreateChatCompletion(
        ChatCompletionRequest request, ServiceDbContext db, IBlobStore blobs, InferenceEngine engine,
        IOptions<Microsoft.AspNetCore.Http.Json.JsonOptions> json, HttpResponse response, CancellationToken cancel)
    {
        var (grammar, formatError) = ResponseFormats.Parse(request.ResponseFormat);
        if (formatError is not null) return formatError;
        var (ready, error) = await Generation.PrepareAsync(request, (text, fineTuned) => ChatPrompts.Encode(text, fineTuned,
                ChatPrompts.Conversation(request.Messages, request.Tools, request.ChatTemplateKwargs, request.ChatTemplate), request.ChatTemplate),
            defaultMaxTokens: null, db, blobs, cancel);
        if (ready is null) return error!;
        var (constrained, unsupported) = ResponseFormats.Constrain(ready.Request, grammar, ready.Model);
        if (constrained is null) return unsupported!;
        var (chunks, busy) = await Generation.StartAsync(engine, constrained, response, cancel);
        if (chunks is null) return busy!;
        var (id, created) = (Generation.NewId("chatcmpl-"), Generation.Now());
        if (request.Stream == true)
            return Generation.Stream(Chunks(chunks, ready.Model, id, created, ready.Choices, request.StreamOptions?.IncludeUsage == true),
                json.Value.SerializerOptions);
        var (choices, usage) = await Generation.CollectAsync(chunks, ready.Choices);
        return TypedResults.Ok(new ChatCompletionResponse(id, "chat.completion", created, ready.Model,
            [.. choices.Select(c => new ChatChoice(c.Index, new ChatMessageDto("assistant", c.Text), ChatLogprobs.Of(c.Logprobs), c.Finish))], usage));
    }

    /// <summary>
    /// Each choice's role delta, its content deltas (with their tokens' logprobs) and its finish; the usage on the last
    /// finish, or, with include_usage, on a last chunk of its own with empty choices (as OpenAI).
    /// </summary>
    static async IAsyncEnumerable<ChatCompletionChunk> Chunks(IAsyncEnumerable<GenerationChunk> chunks, string model, string id, long created, int n, bool includeUsage)
    {
        ChatCompletionChunk Chunk(int index, ChatDelta delta, ChatLogprobs? logprobs, string? finish, Usage? usage) =>
            new(id, "chat.completion.chunk", created, model, [new ChatChunkChoice(index, delta, logprobs, finish)], usage);
        for (int i = 0; i < n; i++) yield return Chunk(i, new ChatDelta("assistant", ""), null, null, null);
        var usage = new ChoicesUsage(n);
        await foreach (var c in chunks)
        {
            usage.Add(c);
            if (c.Text.Length > 0 || c.Logprobs is { Count: > 0 }) yield return Chunk(c.Index, new ChatDelta(null, c.Text), ChatLogprobs.Of(c.Logprobs), null, null);
            if (c.FinishReason is not null)
                yield return Chunk(c.Index, new ChatDelta(null, null), null, c.FinishReason, !includeUsage && usage.Done ? usage.Total : null);
        }
        if (includeUsage) yield return new ChatCompletionChunk(id, "chat.completion.chunk", created, model, [], usage.Total);
    }
}
