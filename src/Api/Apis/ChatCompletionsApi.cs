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
/// <param name="N" example="1">Only 1 is supported.</param>
/// <param name="Tools">OpenAI's tool definitions, passed to the chat template (the model's template decides how they are written).</param>
/// <param name="ChatTemplate">vLLM's field: a Jinja chat template (or the name of one of the model's templates) to render with instead of the model's.</param>
/// <param name="ChatTemplateKwargs">vLLM's field: extra template variables, such as {"enable_thinking": false} for Qwen 3.</param>
/// <param name="ResponseFormat">{"type": "text"} (default), {"type": "json_object"} or {"type": "json_schema", "json_schema": {"name", "schema", "strict"}}: the answer is constrained to JSON (of the schema); docs/API.md lists the supported JSON Schema subset.</param>
public sealed record ChatCompletionRequest(
    string? Model, JsonElement? Messages, int? MaxTokens, int? MaxCompletionTokens, double? Temperature, double? TopP,
    JsonElement? Stop, bool? Stream, long? Seed, int? N, JsonElement? Tools = null, string? ChatTemplate = null, JsonElement? ChatTemplateKwargs = null,
    JsonElement? ResponseFormat = null)
    : ISamplingRequest
{
    int? ISamplingRequest.MaxTokens => MaxCompletionTokens ?? MaxTokens;
}

public sealed record ChatChoice(int Index, ChatMessageDto Message, object? Logprobs, string FinishReason);
public sealed record ChatCompletionResponse(string Id, string Object, long Created, string Model, IReadOnlyList<ChatChoice> Choices, Usage Usage);
public sealed record ChatDelta(string? Role, string? Content);
public sealed record ChatChunkChoice(int Index, ChatDelta Delta, object? Logprobs, string? FinishReason);
public sealed record ChatCompletionChunk(string Id, string Object, long Created, string Model, IReadOnlyList<ChatChunkChoice> Choices, Usage? Usage);

public static class ChatCompletionsApi
{
    public static IEndpointRouteBuilder MapChatCompletionsApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/chat/completions", CreateChatCompletion).WithErrors(400, 404, 429).WithTags("Chat")
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
            return Generation.Stream(Chunks(chunks, ready.Model, id, created), json.Value.SerializerOptions);
        var (text, finish, usage) = await Generation.CollectAsync(chunks);
        return TypedResults.Ok(new ChatCompletionResponse(id, "chat.completion", created, ready.Model,
            [new ChatChoice(0, new ChatMessageDto("assistant", text), null, finish)], usage));
    }

    static async IAsyncEnumerable<ChatCompletionChunk> Chunks(IAsyncEnumerable<GenerationChunk> chunks, string model, string id, long created)
    {
        ChatCompletionChunk Chunk(ChatDelta delta, string? finish, Usage? usage) =>
            new(id, "chat.completion.chunk", created, model, [new ChatChunkChoice(0, delta, null, finish)], usage);
        yield return Chunk(new ChatDelta("assistant", ""), null, null);
        await foreach (var c in chunks)
        {
            if (c.Text.Length > 0) yield return Chunk(new ChatDelta(null, c.Text), null, null);
            if (c.FinishReason is not null) yield return Chunk(new ChatDelta(null, null), c.FinishReason, Generation.UsageOf(c));
        }
    }
}
