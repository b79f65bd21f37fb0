using System.Text.Json;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterService.Api.Apis;

/// <summary>vLLM's tokenize request: a completion <c>prompt</c>, or chat <c>messages</c> rendered with the model's template.</summary>
/// <param name="Model" example="tiny-llama-demo">A base model id or a fine-tuned model name; a fine-tuned model uses the template it was trained with.</param>
/// <param name="Prompt">Text to tokenize as a completion prompt is.</param>
/// <param name="Messages">A chat to render with the chat template and tokenize (instead of prompt).</param>
/// <param name="AddGenerationPrompt">With messages: end with the assistant's header, as a chat completion's prompt does (default true).</param>
/// <param name="ContinueFinalMessage">With messages: end inside the last message, so the model continues it (default false).</param>
/// <param name="AddSpecialTokens">Add the tokenizer's own special tokens (its begin-of-sequence id); default true for prompt, false for messages, whose template writes them.</param>
/// <param name="ChatTemplate">With messages: a template's source, or a name of the model's templates, to render with instead.</param>
/// <param name="ChatTemplateKwargs">With messages: extra template variables ({"enable_thinking": false}).</param>
/// <param name="Tools">With messages: OpenAI's tool definitions, passed to the template.</param>
/// <param name="ReturnTokenStrs">Also answer each token's string as the vocabulary writes it.</param>
public sealed record TokenizeRequest(
    string? Model, string? Prompt, JsonElement? Messages, bool? AddGenerationPrompt, bool? ContinueFinalMessage, bool? AddSpecialTokens,
    string? ChatTemplate, JsonElement? ChatTemplateKwargs, JsonElement? Tools, bool? ReturnTokenStrs);

public sealed record TokenizeResponse(int Count, int MaxModelLen, IReadOnlyList<int> Tokens, IReadOnlyList<string?>? TokenStrs);

/// <param name="Model" example="tiny-llama-demo">A base model id or a fine-tuned model name.</param>
/// <param name="Tokens">Token ids to turn back into text.</param>
public sealed record DetokenizeRequest(string? Model, IReadOnlyList<int>? Tokens);

public sealed record DetokenizeResponse(string Prompt);

/// <summary><c>POST /tokenize</c> and <c>POST /detokenize</c> in vLLM's shapes, through the same text rules as chat, completions and training.</summary>
public static class TokenizeApi
{
    public static IEndpointRouteBuilder MapTokenizeApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/tokenize", Tokenize).WithName("tokenize").WithErrors(400, 404).WithTags("Tokenizer")
            .WithSummary("Token ids of a prompt, or of a chat rendered with the model's chat template (vLLM's /tokenize)");
        app.MapPost("/detokenize", Detokenize).WithName("detokenize").WithErrors(400, 404).WithTags("Tokenizer")
            .WithSummary("The text of token ids (vLLM's /detokenize)");
        return app;
    }

    static async Task<Results<Ok<TokenizeResponse>, JsonHttpResult<ErrorResponse>>> Tokenize(
        TokenizeRequest request, ServiceDbContext db, IBlobStore blobs, CancellationToken cancel)
    {
        var (model, error) = await Generation.ResolveLanguageModelAsync(request.Model, db, cancel);
        if (model is null) return error!;
        bool chat = request.Messages is { ValueKind: not JsonValueKind.Null };
        if (chat == (request.Prompt is not null)) return OpenAiErrors.BadRequest("Give either prompt or messages.", request.Prompt is null ? "prompt" : "messages");
        if (request.AddGenerationPrompt == true && request.ContinueFinalMessage == true)
            return OpenAiErrors.BadRequest("add_generation_prompt and continue_final_message cannot both be true.", "continue_final_message");

        var (text, ids, promptError) = Generation.EncodePrompt(model, request.Model!, (text, fineTuned) =>
        {
            if (!chat) return [.. text.Tokenizer.Encode(request.Prompt!, request.AddSpecialTokens ?? true)];
            var conversation = ChatPrompts.Conversation(request.Messages, request.Tools, request.ChatTemplateKwargs, request.ChatTemplate);
            bool continueFinal = request.ContinueFinalMessage ?? false;
            string rendered = text.RenderChat(conversation, text.ChooseTemplate(request.ChatTemplate, fineTuned),
                addGenerationPrompt: !continueFinal && (request.AddGenerationPrompt ?? true), continueFinal);
            return [.. text.Tokenizer.Encode(rendered, request.AddSpecialTokens ?? false)];
        }, blobs);
        if (ids is null) return promptError!;
        return TypedResults.Ok(new TokenizeResponse(ids.Count, model.Base.ContextLength, ids,
            request.ReturnTokenStrs == true ? ids.Select(text!.Tokenizer.IdToToken).ToList() : null));
    }

    static async Task<Results<Ok<DetokenizeResponse>, JsonHttpResult<ErrorResponse>>> Detokenize(
        DetokenizeRequest request, ServiceDbContext db, IBlobStore blobs, CancellationToken cancel)
    {
        var (model, error) = await Generation.ResolveLanguageModelAsync(request.Model, db, cancel);
        if (model is null) return error!;
        if (request.Tokens is null) return OpenAiErrors.BadRequest("Missing required parameter: 'tokens'.", "tokens");
        var tokenizer = ModelText.ForModel(blobs.Resolve(model.Base.BlobPath)).Tokenizer;
        int bad = request.Tokens.ToList().FindIndex(id => id < 0 || id >= tokenizer.VocabularySize);
        if (bad >= 0)
            return OpenAiErrors.BadRequest($"tokens[{bad}] = {request.Tokens[bad]} is not a token id of this model (0 to {tokenizer.VocabularySize - 1}).", $"tokens[{bad}]");
        return TypedResults.Ok(new DetokenizeResponse(tokenizer.Decode(request.Tokens, skipSpecialTokens: false)));
    }
}
