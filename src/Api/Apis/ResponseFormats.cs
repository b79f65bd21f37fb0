using System.Text.Json;
using System.Text.RegularExpressions;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Inference;
using AdapterService.Core.Inference.Constraints;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterService.Api.Apis;

/// <summary>
/// OpenAI's <c>response_format</c>: <c>text</c> (the default), <c>json_object</c> (any JSON object) or <c>json_schema</c>
/// (a document of the schema), honoured by constrained decoding (<see cref="JsonConstraint"/>). Every error is a 400 with
/// param <c>response_format</c> that names the field or schema keyword.
/// </summary>
public static partial class ResponseFormats
{
    /// <summary>A schema's JSON text beyond this many characters is refused before it is compiled.</summary>
    public const int MaxSchemaChars = 100_000;

    [GeneratedRegex("^[a-zA-Z0-9_-]{1,64}$")]
    private static partial Regex Name();

    /// <summary>The grammar a response format asks for (null for text), or the 400 that says what is wrong with it.</summary>
    public static (JsonGrammar? Grammar, JsonHttpResult<ErrorResponse>? Error) Parse(JsonElement? format)
    {
        static (JsonGrammar?, JsonHttpResult<ErrorResponse>?) Bad(string message) => (null, OpenAiErrors.BadRequest(message, "response_format"));
        if (format is not { } f || f.ValueKind == JsonValueKind.Null) return (null, null);
        if (f.ValueKind != JsonValueKind.Object || !f.TryGetProperty("type", out var type) || type.ValueKind != JsonValueKind.String)
            return Bad("response_format must be an object with a type: 'text', 'json_object' or 'json_schema'.");
        foreach (var p in f.EnumerateObject())
            if (p.Name is not ("type" or "json_schema"))
                return Bad($"response_format: unknown field '{p.Name}'.");
        switch (type.GetString())
        {
            case "text": return (null, null);
            case "json_object": return (JsonGrammar.JsonObject(), null);
            case "json_schema": break;
            default: return Bad($"response_format.type: '{type.GetString()}' is not one of 'text', 'json_object', 'json_schema'.");
        }
        if (!f.TryGetProperty("json_schema", out var js) || js.ValueKind != JsonValueKind.Object)
            return Bad("response_format.json_schema: required for type 'json_schema' (an object with name and schema).");
        foreach (var p in js.EnumerateObject())
            if (p.Name is not ("name" or "schema" or "strict" or "description"))
                return Bad($"response_format.json_schema: unknown field '{p.Name}'.");
        if (!js.TryGetProperty("name", out var name) || name.ValueKind != JsonValueKind.String || !Name().IsMatch(name.GetString()!))
            return Bad("response_format.json_schema.name: required, 1-64 letters, digits, '_' or '-'.");
        if (js.TryGetProperty("strict", out var strict) && strict.ValueKind is not (JsonValueKind.True or JsonValueKind.False or JsonValueKind.Null))
            return Bad("response_format.json_schema.strict: must be a boolean.");
        if (js.TryGetProperty("description", out var description) && description.ValueKind is not (JsonValueKind.String or JsonValueKind.Null))
            return Bad("response_format.json_schema.description: must be a string.");
        if (!js.TryGetProperty("schema", out var schema) || schema.ValueKind == JsonValueKind.Null) return (JsonGrammar.JsonObject(), null);
        if (schema.ValueKind != JsonValueKind.Object) return Bad("response_format.json_schema.schema: must be a JSON Schema object.");
        if (schema.GetRawText().Length > MaxSchemaChars) return Bad($"response_format.json_schema.schema: longer than {MaxSchemaChars} characters.");
        try { return (JsonGrammar.FromSchema(schema), null); }
        catch (ResponseFormatException e) { return Bad($"response_format.json_schema.{e.Message}"); }
    }

    /// <summary>The request with each choice constrained to <paramref name="grammar"/>, or the 400 when the model's vocabulary cannot be.</summary>
    public static (GenerationRequest? Request, JsonHttpResult<ErrorResponse>? Error) Constrain(GenerationRequest request, JsonGrammar? grammar, string model)
    {
        if (grammar is null) return (request, null);
        var tokenizer = request.Tokenizer ?? throw new InvalidOperationException("a language model request has its tokenizer");
        var ends = request.EosIds ?? tokenizer.EosIds;
        if (JsonConstraint.Unsupported(tokenizer, ends) is { } why)
            return (null, OpenAiErrors.BadRequest($"The model '{model}' cannot use response_format: {why}.", "response_format", "model_not_supported"));
        return (request with { Constraint = () => new JsonConstraint(grammar, tokenizer, ends) }, null);
    }
}
