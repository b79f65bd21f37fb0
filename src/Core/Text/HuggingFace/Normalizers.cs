using System.Text;
using System.Text.Json;

namespace AdapterService.Core.Text;

/// <summary>tokenizer.json's <c>normalizer</c>: NFC, NFD, NFKC, NFKD, Lowercase, Replace, Prepend, Strip and Sequence of them.</summary>
static class Normalizers
{
    /// <summary>The normalizer <paramref name="config"/> describes; null for none.</summary>
    public static Func<string, string>? Parse(JsonElement config, string path)
    {
        if (config.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        string where = $"{path}: normalizer";
        return Json.Type(config) switch
        {
            "NFC" => text => Unicode(text, NormalizationForm.FormC),
            "NFD" => text => Unicode(text, NormalizationForm.FormD),
            "NFKC" => text => Unicode(text, NormalizationForm.FormKC),
            "NFKD" => text => Unicode(text, NormalizationForm.FormKD),
            "Lowercase" => text => text.ToLowerInvariant(),
            "Replace" => Replace(config, where),
            "Prepend" => Prepend(Json.String(config, "prepend", where)),
            "Strip" => Strip(Json.Bool(config, "strip_left", true), Json.Bool(config, "strip_right", true)),
            "Sequence" => Sequence(Json.Array(config, "normalizers", where).Select(n => Parse(n, path)).OfType<Func<string, string>>().ToList()),
            var type => throw new InvalidDataException($"{where} {type} is not supported (NFC, NFD, NFKC, NFKD, Lowercase, Replace, Prepend, Strip, Sequence are)"),
        };
    }

    /// <summary>Unicode normalization; text with a lone surrogate (which .NET refuses to normalize) is left as it is.</summary>
    static string Unicode(string text, NormalizationForm form)
    {
        try { return text.Normalize(form); }
        catch (ArgumentException) { return text; }
    }

    static Func<string, string> Replace(JsonElement config, string where)
    {
        var pattern = TextPattern.Parse(Json.Property(config, "pattern", JsonValueKind.Object, $"{where} {Json.Type(config)}"), where);
        string content = Json.String(config, "content", where);
        return text => pattern.Replace(text, content);
    }

    static Func<string, string> Prepend(string prefix) => text => prefix + text;

    static Func<string, string> Strip(bool left, bool right) => text => (left, right) switch
    {
        (true, true) => text.Trim(),
        (true, false) => text.TrimStart(),
        (false, true) => text.TrimEnd(),
        _ => text,
    };

    static Func<string, string> Sequence(List<Func<string, string>> steps) => text =>
    {
        foreach (var step in steps) text = step(text);
        return text;
    };
}
