using System.Globalization;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace AdapterService.Core.Text;

/// <summary>
/// A tokenizer.json pattern (<c>{"String": …}</c> or <c>{"Regex": …}</c>) matched code point by code point, as the Rust
/// tokenizers' Oniguruma does. .NET's regex sees UTF-16 units, so a letter outside the BMP (𝐀, 𠀀) would be two
/// surrogates matching neither <c>\p{L}</c> nor a negated class as one; such text is matched with each supplementary
/// code point stood in for by a BMP character of the same Unicode category, and the matches mapped back.
/// </summary>
sealed class TextPattern
{
    readonly Regex regex;

    /// <summary>
    /// A tokenizer.json comes with an imported model, and its patterns run on every request's text: one that backtracks
    /// catastrophically (<c>(a+)+$</c>) must not hold a thread for ever. A match attempt gets this long, then
    /// <see cref="RegexMatchTimeoutException"/> (the API answers 400 naming the tokenizer's pattern).
    /// </summary>
    public static readonly TimeSpan MatchTimeout = TimeSpan.FromSeconds(1);

    TextPattern(Regex regex) => this.regex = regex;

    public static TextPattern FromRegex(string pattern, string where)
    {
        try { return new TextPattern(new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant, MatchTimeout)); }
        catch (ArgumentException e) { throw new InvalidDataException($"{where}: regex '{pattern}' is not supported: {e.Message}", e); }
    }

    public static TextPattern FromString(string literal) => new(new Regex(Regex.Escape(literal), RegexOptions.CultureInvariant, MatchTimeout));

    /// <summary>The <c>pattern</c> object of a Split, Replace normalizer or Replace decoder.</summary>
    public static TextPattern Parse(JsonElement pattern, string where)
    {
        if (pattern.ValueKind == JsonValueKind.Object)
        {
            if (pattern.TryGetProperty("String", out var s) && s.ValueKind == JsonValueKind.String) return FromString(s.GetString()!);
            if (pattern.TryGetProperty("Regex", out var r) && r.ValueKind == JsonValueKind.String) return FromRegex(r.GetString()!, where);
        }
        throw new InvalidDataException($"{where}: pattern {pattern.GetRawText()} is neither {{\"String\": …}} nor {{\"Regex\": …}}");
    }

    /// <summary>The non-empty matches of the pattern in <paramref name="text"/>, as (start, length) in UTF-16 units, left to right.</summary>
    public List<(int Start, int Length)> Matches(string text)
    {
        var found = new List<(int, int)>();
        if (text.AsSpan().IndexOfAnyInRange('\uD800', '\uDFFF') < 0)
        {
            foreach (var m in regex.EnumerateMatches(text)) if (m.Length > 0) found.Add((m.Index, m.Length));
            return found;
        }
        var (stand, original) = StandIn(text);
        foreach (var m in regex.EnumerateMatches(stand))
            if (m.Length > 0) found.Add((original[m.Index], original[m.Index + m.Length] - original[m.Index]));
        return found;
    }

    public string Replace(string text, string content)
    {
        var matches = Matches(text);
        if (matches.Count == 0) return text;
        var result = new System.Text.StringBuilder(text.Length);
        int at = 0;
        foreach (var (start, length) in matches) { result.Append(text, at, start - at).Append(content); at = start + length; }
        return result.Append(text, at, text.Length - at).ToString();
    }

    /// <summary>The text with each surrogate pair replaced by one BMP character of its category, and per position its index in <paramref name="text"/> (one past the end included).</summary>
    static (string Text, int[] Original) StandIn(string text)
    {
        var chars = new char[text.Length];
        var original = new int[text.Length + 1];
        int n = 0;
        for (int i = 0; i < text.Length; i++, n++)
        {
            original[n] = i;
            if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
            {
                chars[n] = Representative[(int)CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]))];
                i++;
            }
            else chars[n] = text[i];
        }
        original[n] = text.Length;
        return (new string(chars, 0, n), original);
    }

    /// <summary>Per Unicode category, the highest BMP character of it that is not white space (patterns name such characters least).</summary>
    static readonly char[] Representative = BuildRepresentatives();

    static char[] BuildRepresentatives()
    {
        var chosen = new char[32];
        for (int c = 0xFFFD; c >= 0x80; c--)
        {
            if (c is >= 0xD800 and <= 0xDFFF || char.IsWhiteSpace((char)c)) continue;
            int category = (int)CharUnicodeInfo.GetUnicodeCategory((char)c);
            if (chosen[category] == '\0') chosen[category] = (char)c;
        }
        return chosen;
    }
}
