using System.Text.Json;

namespace AdapterService.Core.Text;

/// <summary>Reading tokenizer.json parts: a missing or mistyped field is an <see cref="InvalidDataException"/> naming the part.</summary>
static class Json
{
    public static string Type(JsonElement e) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : e.GetRawText();

    /// <summary>Whether <paramref name="e"/> or a part nested in it has this <c>type</c>.</summary>
    public static bool HasType(JsonElement e, string type) => e.ValueKind switch
    {
        JsonValueKind.Object => Type(e) == type || e.EnumerateObject().Any(p => HasType(p.Value, type)),
        JsonValueKind.Array => e.EnumerateArray().Any(x => HasType(x, type)),
        _ => false,
    };

    public static string String(JsonElement e, string name, string where) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString()!
            : throw new InvalidDataException($"{where} {Type(e)}: {name} is missing or not a string");

    public static string? OptionalString(JsonElement e, string name) =>
        e.ValueKind == JsonValueKind.Object && e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    public static bool Bool(JsonElement e, string name, bool absent) =>
        e.TryGetProperty(name, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : absent;

    public static int Int(JsonElement e, string name, int absent) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i) ? i : absent;

    public static JsonElement.ArrayEnumerator Array(JsonElement e, string name, string where) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Array ? v.EnumerateArray()
            : throw new InvalidDataException($"{where} {Type(e)}: {name} is missing or not a list");

    public static JsonElement Property(JsonElement e, string name, JsonValueKind kind, string where) =>
        e.TryGetProperty(name, out var value) && value.ValueKind == kind ? value
            : throw new InvalidDataException($"{where}: {name} is missing or not a JSON {kind.ToString().ToLowerInvariant()}");

    public static int? Int(JsonElement e) => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out int value) ? value : null;

    public static JsonDocument Parse(string path)
    {
        try
        {
            using var stream = File.OpenRead(path);
            return JsonDocument.Parse(stream);
        }
        catch (JsonException e) { throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e); }
    }
}
