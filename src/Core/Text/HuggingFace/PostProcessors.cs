using System.Text.Json;

namespace AdapterService.Core.Text;

/// <summary>
/// tokenizer.json's <c>post_processor</c> for single texts: TemplateProcessing (the template's special tokens around the
/// text's ids, only with add_special_tokens), ByteLevel (nothing to ids) and Sequence.
/// </summary>
static class PostProcessors
{
    /// <summary>The ids that go before and after a text's ids when special tokens are added.</summary>
    public sealed record Template(IReadOnlyList<int> Before, IReadOnlyList<int> After)
    {
        public static readonly Template None = new([], []);
    }

    public static Template Parse(JsonElement config, IReadOnlyDictionary<string, int> vocab, string path)
    {
        if (config.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return Template.None;
        string where = $"{path}: post_processor";
        switch (Json.Type(config))
        {
            case "ByteLevel":
                return Template.None;
            case "Sequence":
                var steps = Json.Array(config, "processors", where).Select(p => Parse(p, vocab, path)).ToList();
                // Each processor wraps what the ones before it made.
                return new Template([.. steps.AsEnumerable().Reverse().SelectMany(s => s.Before)], [.. steps.SelectMany(s => s.After)]);
            case "TemplateProcessing":
                var before = new List<int>();
                var after = new List<int>();
                bool seenText = false;
                foreach (var item in Json.Array(config, "single", where))
                    if (item.TryGetProperty("Sequence", out var sequence))
                    {
                        if (Json.OptionalString(sequence, "id") != "A" || seenText) throw new InvalidDataException($"{where} TemplateProcessing: single item {item.GetRawText()} is not supported");
                        seenText = true;
                    }
                    else if (item.TryGetProperty("SpecialToken", out var special))
                        (seenText ? after : before).AddRange(SpecialIds(config, Json.String(special, "id", where), vocab, where));
                    else throw new InvalidDataException($"{where} TemplateProcessing: single item {item.GetRawText()} is not supported");
                return new Template(before, after);
            case var type:
                throw new InvalidDataException($"{where} {type} is not supported (TemplateProcessing, ByteLevel, Sequence are)");
        }
    }

    /// <summary>A template token's ids: its entry in the template's special_tokens, else the vocabulary's id of it.</summary>
    static IEnumerable<int> SpecialIds(JsonElement config, string name, IReadOnlyDictionary<string, int> vocab, string where)
    {
        if (config.TryGetProperty("special_tokens", out var specials) && specials.ValueKind == JsonValueKind.Object
            && specials.TryGetProperty(name, out var entry) && entry.TryGetProperty("ids", out var ids) && ids.ValueKind == JsonValueKind.Array)
            return ids.EnumerateArray().Select(i => Json.Int(i) ?? throw new InvalidDataException($"{where} TemplateProcessing: '{name}' has an id that is not a number")).ToList();
        return vocab.TryGetValue(name, out int id) ? [id] : throw new InvalidDataException($"{where} TemplateProcessing: special token '{name}' is not in the vocabulary");
    }
}
