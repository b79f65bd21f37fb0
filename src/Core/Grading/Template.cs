using System.Globalization;
using System.Text;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace AdapterService.Core.Grading;

/// <summary>One <c>{{ namespace.path }}</c> reference: its namespace (item or sample) and the keys and indices after it.</summary>
public sealed record TemplatePath(string Namespace, IReadOnlyList<object> Segments, string Text)
{
    /// <summary>Parses <c>item.a.b[0]</c>; null when it is not a namespace followed by at least one key or index.</summary>
    public static TemplatePath? Parse(string text)
    {
        var segments = new List<object>();
        int i = 0;
        while (i < text.Length)
        {
            if (text[i] == '[')
            {
                int close = text.IndexOf(']', i);
                if (segments.Count == 0 || close < 0 || !int.TryParse(text.AsSpan(i + 1, close - i - 1), NumberStyles.None, CultureInfo.InvariantCulture, out int index))
                    return null;
                segments.Add(index);
                i = close + 1;
                continue;
            }
            if (segments.Count > 0)
            {
                if (text[i] != '.') return null;
                i++;
            }
            int start = i;
            while (i < text.Length && (char.IsAsciiLetterOrDigit(text[i]) || text[i] is '_' or '-')) i++;
            if (i == start) return null;
            segments.Add(text[start..i]);
        }
        return segments.Count >= 2 && segments[0] is string ns ? new TemplatePath(ns, segments.Skip(1).ToList(), text) : null;
    }

    /// <summary>The value at <paramref name="segments"/> inside <paramref name="root"/>, or null when any step is missing.</summary>
    public static JsonElement? Find(JsonElement root, IReadOnlyList<object> segments)
    {
        var at = root;
        foreach (var s in segments)
        {
            if (s is string key && at.ValueKind == JsonValueKind.Object && at.TryGetProperty(key, out var child)) at = child;
            else if (s is int i && at.ValueKind == JsonValueKind.Array && i < at.GetArrayLength()) at = at[i];
            else return null;
        }
        return at;
    }

    public static bool Exists(JsonElement root, IReadOnlyList<object> segments) => Find(root, segments) is not null;
}

/// <summary>
/// A grader string with <c>{{ item.field }}</c> and <c>{{ sample.output_text }}</c> references (OpenAI's templating: only
/// the <c>item</c> and <c>sample</c> namespaces, nested values by JSON-path-like keys and [indices]). Parsed once at
/// validation; rendering an item without a field it uses throws <see cref="GraderException"/> naming the field.
/// </summary>
public sealed partial class Template
{
    /// <summary>What a sample exposes: its text, and that text read as JSON.</summary>
    static readonly string[] SampleFields = ["output_text", "output_json"];

    readonly List<object> parts = [];   // literal strings and TemplatePaths in order
    public string Source { get; }
    /// <summary>The JSON path of this string in the request, for errors.</summary>
    public string Param { get; }

    public IEnumerable<TemplatePath> ItemPaths => parts.OfType<TemplatePath>().Where(p => p.Namespace == "item");

    /// <summary>Whether it refers to the sample (an eval's input messages may not: they are written before there is one).</summary>
    public bool HasSampleReferences => parts.OfType<TemplatePath>().Any(p => p.Namespace == "sample");

    Template(string source, string param) => (Source, Param) = (source, param);

    /// <summary>Parses <paramref name="source"/>; a reference outside the item and sample namespaces is an error naming <paramref name="param"/>.</summary>
    public static Template Parse(string source, string param)
    {
        var template = new Template(source, param);
        int at = 0;
        foreach (Match m in Reference().Matches(source))
        {
            if (m.Index > at) template.parts.Add(source[at..m.Index]);
            string inner = m.Groups[1].Value.Trim();
            var path = TemplatePath.Parse(inner)
                       ?? throw new GraderException($"'{{{{{inner}}}}}' in {param} is not a template reference: write {{{{item.field}}}} or {{{{sample.output_text}}}}.", param);
            if (path.Namespace is not ("item" or "sample"))
                throw new GraderException($"'{{{{{inner}}}}}' in {param} uses the namespace '{path.Namespace}'; templates may use only 'item' and 'sample'.", param);
            if (path.Namespace == "sample" && (path.Segments[0] is not string field || !SampleFields.Contains(field) || (field == "output_text" && path.Segments.Count > 1)))
                throw new GraderException($"'{{{{{inner}}}}}' in {param}: a sample has {string.Join(" and ", SampleFields.Select(f => "sample." + f))} (output_json's fields by key).", param);
            template.parts.Add(path);
            at = m.Index + m.Length;
        }
        if (at < source.Length) template.parts.Add(source[at..]);
        return template;
    }

    [GeneratedRegex(@"\{\{(.*?)\}\}", RegexOptions.Singleline)]
    private static partial Regex Reference();

    /// <summary>The text with every reference replaced: strings as they are, other JSON values as JSON.</summary>
    public string Render(GradingInput input)
    {
        var text = new StringBuilder();
        foreach (var part in parts)
        {
            if (part is string literal) { text.Append(literal); continue; }
            var path = (TemplatePath)part;
            if (path.Namespace == "item")
            {
                var value = TemplatePath.Find(input.Item, path.Segments)
                            ?? throw new GraderException($"The item has no field '{path.Text}', which {Param} uses.", path.Text);
                text.Append(Text(value));
            }
            else if ((string)path.Segments[0] == "output_text") text.Append(input.OutputText);
            else if (input.OutputJson is { } json && TemplatePath.Find(json, path.Segments.Skip(1).ToList()) is { } value) text.Append(Text(value));
            // a sample that is not JSON, or lacks the field, renders empty: it is the sample that is being graded
        }
        return text.ToString();
    }

    static string Text(JsonElement value) => value.ValueKind == JsonValueKind.String ? value.GetString()! : value.GetRawText();
}
