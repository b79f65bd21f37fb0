using System.Runtime.CompilerServices;
using System.Text.Json;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Models;
using AdapterService.Core.Inference;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterService.Api.Apis;

/// <summary>Sampling fields shared by /v1/completions and /v1/chat/completions.</summary>
public interface ISamplingRequest
{
    string? Model { get; }
    int? MaxTokens { get; }
    double? Temperature { get; }
    double? TopP { get; }
    JsonElement? Stop { get; }
    bool? Stream { get; }
    long? Seed { get; }
    int? N { get; }
    double? PresencePenalty { get; }
    double? FrequencyPenalty { get; }
    JsonElement? LogitBias { get; }
    StreamOptions? StreamOptions { get; }
    /// <summary>The top alternatives wanted with each token's logprob (null: no logprobs), or the 400 naming the field.</summary>
    (int? Top, JsonHttpResult<ErrorResponse>? Error) LogprobsWanted();
}

/// <summary>OpenAI's stream_options.</summary>
/// <param name="IncludeUsage">A last chunk, before [DONE], with empty choices and the usage of the whole request; the other chunks' usage is null.</param>
public sealed record StreamOptions(bool? IncludeUsage);

/// <summary>OpenAI's usage; <paramref name="PromptTokensDetails"/>.cached_tokens: prompt tokens served from the prefix cache.</summary>
public sealed record Usage(int PromptTokens, int CompletionTokens, int TotalTokens, PromptTokensDetails PromptTokensDetails);

/// <summary>OpenAI's prompt_tokens_details.</summary>
public sealed record PromptTokensDetails(int CachedTokens);

/// <summary>One choice's whole answer: its text, finish reason and (when asked for) its tokens' logprobs.</summary>
public sealed record CollectedChoice(int Index, string Text, string Finish, IReadOnlyList<TokenLogprob>? Logprobs);

/// <summary>The usage of a request of n choices, from its chunks: the prompt once, the choices' completion tokens summed (as OpenAI).</summary>
public sealed class ChoicesUsage(int choices)
{
    readonly int[] completion = new int[choices];
    int prompt, cached, finished;

    public void Add(GenerationChunk chunk)
    {
        prompt = chunk.PromptTokens;
        cached = chunk.CachedTokens;
        completion[chunk.Index] = chunk.CompletionTokens;
        if (chunk.FinishReason is not null) finished++;
    }

    /// <summary>Every choice has finished.</summary>
    public bool Done => finished == completion.Length;
    public Usage Total => new(prompt, completion.Sum(), prompt + completion.Sum(), new PromptTokensDetails(cached));
}

/// <summary>The mechanics both completion endpoints share: model lookup, validation, running, streaming.</summary>
public static class Generation
{
    public sealed record Prepared(GenerationRequest Request, string Model)
    {
        public int Choices => Request.Options.N;
    }

    /// <summary>The most choices (<c>n</c>) one request may ask for.</summary>
    public const int MaxChoices = 8;

    /// <summary>
    /// Checks the sampling fields and resolves the model; the caller encodes the prompt with the model's text rules and,
    /// for a fine-tuned model, the chat template it was trained with.
    /// </summary>
    public static async Task<(Prepared? Ready, JsonHttpResult<ErrorResponse>? Error)> PrepareAsync(
        ISamplingRequest request, Func<ModelText, ChatTemplate?, List<int>> prompt, int? defaultMaxTokens, ServiceDbContext db, IBlobStore blobs, CancellationToken cancel)
    {
        var (model, notFound) = await ResolveLanguageModelAsync(request.Model, db, cancel);
        if (model is null) return (null, notFound);
        if (request.N is < 1 or > MaxChoices) return (null, OpenAiErrors.BadRequest($"n must be between 1 and {MaxChoices}.", "n"));
        if (request.PresencePenalty is < -2 or > 2 || request.PresencePenalty is double.NaN)
            return (null, OpenAiErrors.BadRequest("presence_penalty must be between -2 and 2.", "presence_penalty"));
        if (request.FrequencyPenalty is < -2 or > 2 || request.FrequencyPenalty is double.NaN)
            return (null, OpenAiErrors.BadRequest("frequency_penalty must be between -2 and 2.", "frequency_penalty"));
        if (request.StreamOptions is not null && request.Stream != true)
            return (null, OpenAiErrors.BadRequest("stream_options is only allowed when stream is true.", "stream_options"));
        var (logprobs, logprobsError) = request.LogprobsWanted();
        if (logprobsError is not null) return (null, logprobsError);
        if (request.Temperature is < 0 or > 2) return (null, OpenAiErrors.BadRequest("temperature must be between 0 and 2.", "temperature"));
        if (request.TopP is <= 0 or > 1) return (null, OpenAiErrors.BadRequest("top_p must be in (0, 1].", "top_p"));
        if (request.MaxTokens is < 1) return (null, OpenAiErrors.BadRequest("max_tokens must be at least 1.", "max_tokens"));
        var stop = request.Stop switch
        {
            null or { ValueKind: JsonValueKind.Null } => [],
            { ValueKind: JsonValueKind.String } s => [s.GetString()!],
            { ValueKind: JsonValueKind.Array } a when a.GetArrayLength() <= 4 && a.EnumerateArray().All(e => e.ValueKind == JsonValueKind.String) =>
                a.EnumerateArray().Select(e => e.GetString()!).ToList(),
            _ => (List<string>?)null,
        };
        if (stop is null) return (null, OpenAiErrors.BadRequest("stop must be a string or a list of up to 4 strings.", "stop"));

        var (text, ids, promptError) = EncodePrompt(model, request.Model!, prompt, blobs);
        if (ids is null) return (null, promptError);
        int context = model.Base.ContextLength, available = context - ids.Count;
        int maxTokens = request.MaxTokens ?? defaultMaxTokens ?? available;
        if (available < 1 || maxTokens > available)
            return (null, OpenAiErrors.BadRequest(
                $"This model's maximum context length is {context} tokens. However, you requested {ids.Count + maxTokens} tokens ({ids.Count} in the prompt, {maxTokens} for the completion).",
                "messages", "context_length_exceeded"));

        var (bias, biasError) = LogitBias(request.LogitBias, text!.Tokenizer.VocabularySize);
        if (biasError is not null) return (null, biasError);

        var options = new SamplingOptions(maxTokens, request.Temperature ?? 1.0, request.TopP ?? 1.0, stop, request.Seed,
            request.N ?? 1, request.PresencePenalty ?? 0, request.FrequencyPenalty ?? 0, bias, logprobs);
        return (new Prepared(new GenerationRequest(model.Base.Id, blobs.Resolve(model.Base.BlobPath), model.AdapterKey,
            model.AdapterBlobPath is null ? null : blobs.Resolve(model.AdapterBlobPath), ids, options, text!.Tokenizer, text.EosIds), request.Model!), null);
    }

    /// <summary>OpenAI's logit_bias: token ids (as strings) to biases from −100 to 100, every id in the vocabulary; or the 400 naming the key.</summary>
    static (Dictionary<int, double>? Bias, JsonHttpResult<ErrorResponse>? Error) LogitBias(JsonElement? json, int vocabulary)
    {
        if (json is null or { ValueKind: JsonValueKind.Null }) return (null, null);
        if (json.Value.ValueKind != JsonValueKind.Object)
            return (null, OpenAiErrors.BadRequest("logit_bias must be an object mapping token ids (as strings) to biases from -100 to 100.", "logit_bias"));
        var bias = new Dictionary<int, double>();
        foreach (var entry in json.Value.EnumerateObject())
        {
            if (!int.TryParse(entry.Name, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out int id))
                return (null, OpenAiErrors.BadRequest($"logit_bias: '{Clip(entry.Name)}' is not a token id.", "logit_bias"));
            if (id >= vocabulary)
                return (null, OpenAiErrors.BadRequest($"logit_bias: token id {id} is outside the model's vocabulary (ids 0 to {vocabulary - 1}).", "logit_bias"));
            if (entry.Value.ValueKind != JsonValueKind.Number || !entry.Value.TryGetDouble(out double value) || value is < -100 or > 100)
                return (null, OpenAiErrors.BadRequest($"logit_bias['{id}'] must be a number from -100 to 100.", "logit_bias"));
            bias[id] = value;
        }
        return (bias.Count > 0 ? bias : null, null);
    }

    static string Clip(string key) => key.Length <= 40 ? key : key[..40] + "…";

    /// <summary>A base or fine-tuned language model by name, or the 400/404 that says why not (none given, no such model, an image classifier).</summary>
    public static async Task<(ResolvedModel? Model, JsonHttpResult<ErrorResponse>? Error)> ResolveLanguageModelAsync(string? name, ServiceDbContext db, CancellationToken cancel)
    {
        if (string.IsNullOrEmpty(name)) return (null, OpenAiErrors.BadRequest("Missing required parameter: 'model'.", "model"));
        var model = await ModelNames.ResolveAsync(db, name, cancel);
        if (model is null) return (null, OpenAiErrors.NotFound($"The model '{name}' does not exist.", "model", "model_not_found"));
        if (model.Base.Family == "vit")
            return (null, OpenAiErrors.BadRequest($"The model '{name}' is an image classifier: it has no tokenizer; use POST /v1/classify.", "model", "model_not_supported"));
        return (model, null);
    }

    /// <summary>
    /// A prompt's ids through the model's text rules (<see cref="ModelText"/>), or the 400 that says what is wrong: a
    /// request field, a template that fails or refuses the conversation (its own message), a model that cannot chat.
    /// </summary>
    public static (ModelText? Text, List<int>? Ids, JsonHttpResult<ErrorResponse>? Error) EncodePrompt(
        ResolvedModel model, string name, Func<ModelText, ChatTemplate?, List<int>> prompt, IBlobStore blobs)
    {
        var text = ModelText.ForModel(blobs.Resolve(model.Base.BlobPath));
        try
        {
            var fineTuned = text.TemplateOfAdapter(model.AdapterBlobPath is null ? null : blobs.Resolve(model.AdapterBlobPath));
            return (text, prompt(text, fineTuned), null);
        }
        catch (ArgumentException e) { return (text, null, OpenAiErrors.BadRequest(e.Message, e.ParamName)); }
        catch (ChatTemplateException e)
        {
            return (text, null, OpenAiErrors.BadRequest(e.RaisedByTemplate ? $"The chat template refused the conversation: {e.Message}" : $"Chat template error: {e.Message}",
                e.RaisedByTemplate ? "messages" : "chat_template", "invalid_chat_template"));
        }
        catch (NotSupportedException e) { return (text, null, OpenAiErrors.BadRequest($"The model '{name}' cannot do this: {e.Message}.", "model", "model_not_supported")); }
    }

    /// <summary>
    /// Queues the request as the caller's project's (the prefix cache's partition, admission's shares); when the engine
    /// is full, the 429 error (with Retry-After) to answer instead.
    /// </summary>
    public static async Task<(IAsyncEnumerable<GenerationChunk>? Chunks, JsonHttpResult<ErrorResponse>? Busy)> StartAsync(
        InferenceEngine engine, GenerationRequest request, HttpResponse response, CancellationToken cancel)
    {
        try
        {
            return (await engine.StartAsync(request with { Project = response.HttpContext.User.ProjectId() }, cancel), null);
        }
        catch (EngineBusyException e)
        {
            response.Headers.RetryAfter = "1";
            return (null, OpenAiErrors.Error(StatusCodes.Status429TooManyRequests, e.Message, null, "server_busy"));
        }
    }

    /// <summary>Every choice's whole answer, by index, and the request's usage.</summary>
    public static async Task<(IReadOnlyList<CollectedChoice> Choices, Usage Usage)> CollectAsync(IAsyncEnumerable<GenerationChunk> chunks, int n)
    {
        var text = Enumerable.Range(0, n).Select(_ => new System.Text.StringBuilder()).ToArray();
        var finish = new string[n];
        var logprobs = new List<TokenLogprob>?[n];
        var usage = new ChoicesUsage(n);
        await foreach (var chunk in chunks)
        {
            text[chunk.Index].Append(chunk.Text);
            if (chunk.Logprobs is not null) (logprobs[chunk.Index] ??= []).AddRange(chunk.Logprobs);
            finish[chunk.Index] = chunk.FinishReason ?? finish[chunk.Index];
            usage.Add(chunk);
        }
        return (Enumerable.Range(0, n).Select(i => new CollectedChoice(i, text[i].ToString(), finish[i], logprobs[i])).ToList(), usage.Total);
    }

    /// <summary>The same error, its param prefixed with the batch input it belongs to.</summary>
    public static JsonHttpResult<ErrorResponse> ForInput(JsonHttpResult<ErrorResponse> error, int index)
    {
        var body = error.Value!.Error;
        return OpenAiErrors.Error(error.StatusCode ?? 400, $"inputs[{index}]: {body.Message}", $"inputs[{index}].{body.Param ?? ""}".TrimEnd('.'), body.Code);
    }

    /// <summary>Server-sent events in OpenAI's stream format: one JSON chunk per event, then <c>[DONE]</c>.</summary>
    public static ServerSentEventsResult<string> Stream<T>(IAsyncEnumerable<T> chunks, JsonSerializerOptions json) =>
        TypedResults.ServerSentEvents(Serialize(chunks, json));

    static async IAsyncEnumerable<string> Serialize<T>(IAsyncEnumerable<T> chunks, JsonSerializerOptions json, [EnumeratorCancellation] CancellationToken cancel = default)
    {
        await foreach (var chunk in chunks.WithCancellation(cancel)) yield return JsonSerializer.Serialize(chunk, json);
        yield return "[DONE]";
    }

    public static string NewId(string prefix) => prefix + Ids.New();
    public static long Now() => DateTimeOffset.UtcNow.ToUnixTimeSeconds();
}
