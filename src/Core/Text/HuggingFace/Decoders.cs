using System.Globalization;
using System.Text;
using System.Text.Json;

namespace AdapterService.Core.Text;

/// <summary>
/// tokenizer.json's <c>decoder</c>: turns the tokens' strings back into text, each step on the list of pieces the one
/// before made. ByteLevel, ByteFallback, Metaspace, Fuse, Strip, Replace, WordPiece, BPEDecoder and Sequence.
/// </summary>
static class Decoders
{
    public delegate List<string> Decoder(List<string> tokens);

    /// <summary>The decoder <paramref name="config"/> describes, null for none; <paramref name="added"/> are the added tokens' contents, which ByteLevel passes through as text rather than as byte characters.</summary>
    public static Decoder? Parse(JsonElement config, IReadOnlySet<string> added, string path)
    {
        if (config.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        string where = $"{path}: decoder";
        switch (Json.Type(config))
        {
            case "ByteLevel":
                return tokens => ByteLevel(tokens, added);
            case "ByteFallback":
                return ByteFallback;
            case "Metaspace":
                string replacement = Json.OptionalString(config, "replacement") ?? "\u2581";
                string scheme = Json.OptionalString(config, "prepend_scheme") ?? (Json.Bool(config, "add_prefix_space", true) ? "always" : "never");
                return tokens => tokens.Select((t, i) =>
                {
                    string text = t.Replace(replacement, " ");
                    return i == 0 && scheme != "never" && text.StartsWith(' ') ? text[1..] : text;
                }).ToList();
            case "Fuse":
                return tokens => [string.Concat(tokens)];
            case "Strip":
                string content = Json.String(config, "content", where);
                if (content.Length != 1) throw new InvalidDataException($"{where} Strip: content '{content}' is not one character");
                int start = Json.Int(config, "start", 0), stop = Json.Int(config, "stop", 0);
                return tokens => tokens.Select(t => Strip(t, content[0], start, stop)).ToList();
            case "Replace":
                var pattern = TextPattern.Parse(Json.Property(config, "pattern", JsonValueKind.Object, $"{where} {Json.Type(config)}"), where);
                string with = Json.String(config, "content", where);
                return tokens => tokens.Select(t => pattern.Replace(t, with)).ToList();
            case "WordPiece":
                string prefix = Json.OptionalString(config, "prefix") ?? "##";
                bool cleanup = Json.Bool(config, "cleanup", true);
                return tokens => tokens.Select((t, i) =>
                {
                    if (i > 0) t = t.StartsWith(prefix, StringComparison.Ordinal) ? t[prefix.Length..] : " " + t;
                    return cleanup ? CleanUp(t) : t;
                }).ToList();
            case "BPEDecoder":
                string suffix = Json.OptionalString(config, "suffix") ?? "</w>";
                return tokens => tokens.Select((t, i) => t.Replace(suffix, i == tokens.Count - 1 ? "" : " ")).ToList();
            case "Sequence":
                var steps = Json.Array(config, "decoders", where).Select(d => Parse(d, added, path)).OfType<Decoder>().ToList();
                return tokens =>
                {
                    foreach (var step in steps) tokens = step(tokens);
                    return tokens;
                };
            case var type:
                throw new InvalidDataException($"{where} {type} is not supported (ByteLevel, ByteFallback, Metaspace, Fuse, Strip, Replace, WordPiece, BPEDecoder, Sequence are)");
        }
    }

    /// <summary>Runs of byte-level tokens as the UTF-8 text of their bytes (invalid sequences as U+FFFD); added tokens as written.</summary>
    static List<string> ByteLevel(List<string> tokens, IReadOnlySet<string> added)
    {
        var result = new List<string>();
        var bytes = new List<byte>();
        void Flush()
        {
            if (bytes.Count == 0) return;
            result.Add(Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes)));
            bytes.Clear();
        }
        foreach (var token in tokens)
        {
            if (added.Contains(token)) { Flush(); result.Add(token); continue; }
            foreach (char c in token)
                if (Text.ByteLevel.Decode.TryGetValue(c, out byte b)) bytes.Add(b);
                else bytes.AddRange(Encoding.UTF8.GetBytes(c.ToString()));
        }
        Flush();
        return result;
    }

    /// <summary>Runs of <c>&lt;0xNN&gt;</c> tokens as the UTF-8 text of their bytes (invalid sequences as U+FFFD).</summary>
    static List<string> ByteFallback(List<string> tokens)
    {
        var result = new List<string>(tokens.Count);
        var bytes = new List<byte>();
        foreach (var token in tokens)
        {
            if (token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>'
                && byte.TryParse(token.AsSpan(3, 2), NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out byte b))
            {
                bytes.Add(b);
                continue;
            }
            if (bytes.Count > 0) { result.Add(Encoding.UTF8.GetString([.. bytes])); bytes.Clear(); }
            result.Add(token);
        }
        if (bytes.Count > 0) result.Add(Encoding.UTF8.GetString([.. bytes]));
        return result;
    }

    static string Strip(string token, char content, int start, int stop)
    {
        int from = 0, to = token.Length;
        while (from < start && from < token.Length && token[from] == content) from++;
        while (token.Length - to < stop && to > from && token[to - 1] == content) to--;
        return token[from..to];
    }

    /// <summary>
    /// clean_up_tokenization_spaces: the space before punctuation and English contractions removed (" ." → ".", " n't" → "n't").
    /// </summary>
    public static string CleanUp(string text) => text.Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",")
        .Replace(" ' ", "'").Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s").Replace(" 've", "'ve").Replace(" 're", "'re");

    /// <summary>Characters that <see cref="CleanUp"/>'s patterns are made of: text cut after any other character cleans up the same in parts.</summary>
    public static bool CleanUpCannotSpan(char c) => c is not (' ' or '.' or '?' or '!' or ',' or '\'' or 'n' or 't' or 'm' or 's' or 'v' or 'r' or 'e');
}
