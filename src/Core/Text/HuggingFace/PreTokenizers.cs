using System.Globalization;
using System.Text.Json;

namespace AdapterService.Core.Text;

/// <summary>
/// tokenizer.json's <c>pre_tokenizer</c>: splits a section of text (the part between added tokens, normalized) into the
/// words BPE runs on. Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation and Sequence, with
/// the Rust tokenizers' split behaviors.
/// </summary>
static class PreTokenizers
{
    /// <summary>Splits each word of the list in place of it; <c>section</c> is the index of the text's section (Metaspace's prepend_scheme "first").</summary>
    public delegate List<string> PreTokenizer(List<string> words, int section);

    /// <summary>GPT-2's pattern, what ByteLevel's <c>use_regex</c> splits on.</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    static readonly Lazy<TextPattern> Gpt2 = new(() => TextPattern.FromRegex(Gpt2Pattern, "GPT-2 pattern"));
    static readonly Lazy<TextPattern> Words = new(() => TextPattern.FromRegex(@"\w+|[^\w\s]+", "Whitespace pattern"));

    enum Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

    public static PreTokenizer? Parse(JsonElement config, string path)
    {
        if (config.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined) return null;
        string where = $"{path}: pre_tokenizer";
        switch (Json.Type(config))
        {
            case "Split":
                var pattern = TextPattern.Parse(Json.Property(config, "pattern", JsonValueKind.Object, $"{where} {Json.Type(config)}"), where);
                var behavior = ParseBehavior(config, where, Behavior.Isolated);
                bool invert = Json.Bool(config, "invert", false);
                return Each(word => Split(word, Matched(word, pattern.Matches(word), invert), behavior));
            case "ByteLevel":
                return ByteLevel(Json.Bool(config, "add_prefix_space", true), Json.Bool(config, "use_regex", true));
            case "Metaspace":
                return Metaspace(config, where);
            case "Digits":
                bool individual = Json.Bool(config, "individual_digits", false);
                return Each(word => Split(word, ByCodePoint(word, c => CharUnicodeInfo.GetUnicodeCategory(c) is UnicodeCategory.DecimalDigitNumber
                    or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber), individual ? Behavior.Isolated : Behavior.Contiguous));
            case "Whitespace":
                return Each(word => Split(word, Matched(word, Words.Value.Matches(word), invert: true), Behavior.Removed));
            case "WhitespaceSplit":
                return Each(word => Split(word, ByCodePoint(word, c => c < 0x10000 && char.IsWhiteSpace((char)c)), Behavior.Removed));
            case "Punctuation":
                var punctuation = ParseBehavior(config, where, Behavior.Isolated);
                return Each(word => Split(word, ByCodePoint(word, IsPunctuation), punctuation));
            case "Sequence":
                var steps = Json.Array(config, "pretokenizers", where).Select(p => Parse(p, path)).OfType<PreTokenizer>().ToList();
                return (words, section) =>
                {
                    foreach (var step in steps) words = step(words, section);
                    return words;
                };
            case var type:
                throw new InvalidDataException($"{where} {type} is not supported (Split, ByteLevel, Metaspace, Digits, Whitespace, WhitespaceSplit, Punctuation, Sequence are)");
        }
    }

    static Behavior ParseBehavior(JsonElement config, string where, Behavior absent) => Json.OptionalString(config, "behavior") switch
    {
        null => absent,
        var name => Enum.TryParse<Behavior>(name, out var b) ? b : throw new InvalidDataException($"{where} {Json.Type(config)}: behavior '{name}' is not supported"),
    };

    static PreTokenizer Each(Func<string, IEnumerable<string>> split) => (words, _) =>
    {
        var result = new List<string>(words.Count);
        foreach (var word in words) result.AddRange(split(word));
        return result;
    };

    /// <summary>ByteLevel: a space before the text unless it has one, GPT-2's split, then each word's UTF-8 bytes in the byte-level alphabet.</summary>
    static PreTokenizer ByteLevel(bool addPrefixSpace, bool useRegex) => Each(word =>
    {
        if (addPrefixSpace && !word.StartsWith(' ')) word = " " + word;
        var pieces = useRegex ? Split(word, Matched(word, Gpt2.Value.Matches(word), invert: false), Behavior.Isolated) : [word];
        return pieces.Select(Text.ByteLevel.FromText);
    });

    /// <summary>Metaspace: spaces written as the replacement (▁), one put before the text by the prepend scheme, words split before each ▁ when <c>split</c>.</summary>
    static PreTokenizer Metaspace(JsonElement config, string where)
    {
        string replacement = Json.OptionalString(config, "replacement") ?? "\u2581";
        if (replacement.Length != 1) throw new InvalidDataException($"{where} Metaspace: replacement '{replacement}' is not one character");
        // Files from before prepend_scheme say add_prefix_space instead (true: always, false: never).
        string scheme = Json.OptionalString(config, "prepend_scheme") ?? (Json.Bool(config, "add_prefix_space", true) ? "always" : "never");
        if (scheme is not ("always" or "first" or "never")) throw new InvalidDataException($"{where} Metaspace: prepend_scheme '{scheme}' is not supported");
        bool split = Json.Bool(config, "split", true);
        var marker = TextPattern.FromString(replacement);
        return (words, section) =>
        {
            var result = new List<string>(words.Count);
            foreach (var w in words)
            {
                string word = w.Replace(" ", replacement);
                if (!word.StartsWith(replacement, StringComparison.Ordinal) && (scheme == "always" || scheme == "first" && section == 0))
                    word = replacement + word;
                result.AddRange(split ? Split(word, Matched(word, marker.Matches(word), invert: false), Behavior.MergedWithNext) : [word]);
            }
            return result;
        };
    }

    /// <summary>ASCII punctuation or a Unicode punctuation category, as Rust's is_ascii_punctuation || is_punctuation.</summary>
    static bool IsPunctuation(int c) => c < 128 ? c is > 32 and < 127 && !char.IsAsciiLetterOrDigit((char)c)
        : CharUnicodeInfo.GetUnicodeCategory(c) is UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation
            or UnicodeCategory.OpenPunctuation or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
            or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation;

    /// <summary>The word cut into (start, length, matched) parts covering it: the matches and the text between them.</summary>
    static List<(int Start, int Length, bool Match)> Matched(string word, List<(int Start, int Length)> matches, bool invert)
    {
        var parts = new List<(int, int, bool)>(matches.Count * 2 + 1);
        int at = 0;
        foreach (var (start, length) in matches)
        {
            if (start > at) parts.Add((at, start - at, invert));
            parts.Add((start, length, !invert));
            at = start + length;
        }
        if (at < word.Length) parts.Add((at, word.Length - at, invert));
        return parts;
    }

    /// <summary>Each code point a part of its own: matched where <paramref name="match"/> holds, the runs between unmatched.</summary>
    static List<(int Start, int Length, bool Match)> ByCodePoint(string word, Func<int, bool> match)
    {
        var parts = new List<(int, int, bool)>();
        int runStart = 0;
        for (int i = 0; i < word.Length;)
        {
            int width = char.IsSurrogatePair(word, i) ? 2 : 1;
            int c = width == 2 ? char.ConvertToUtf32(word[i], word[i + 1]) : word[i];
            if (match(c))
            {
                if (i > runStart) parts.Add((runStart, i - runStart, false));
                parts.Add((i, width, true));
                runStart = i + width;
            }
            i += width;
        }
        if (runStart < word.Length) parts.Add((runStart, word.Length - runStart, false));
        return parts;
    }

    /// <summary>The words the parts make under <paramref name="behavior"/>, as the Rust tokenizers' SplitDelimiterBehavior does.</summary>
    static List<string> Split(string word, List<(int Start, int Length, bool Match)> parts, Behavior behavior)
    {
        var spans = new List<(int Start, int End)>(parts.Count);
        bool previousMatch = false;
        switch (behavior)
        {
            case Behavior.Removed:
                foreach (var p in parts) if (!p.Match) spans.Add((p.Start, p.Start + p.Length));
                break;
            case Behavior.Isolated:
                foreach (var p in parts) spans.Add((p.Start, p.Start + p.Length));
                break;
            case Behavior.MergedWithPrevious:
                foreach (var p in parts)
                {
                    if (p.Match && !previousMatch && spans.Count > 0) spans[^1] = (spans[^1].Start, p.Start + p.Length);
                    else spans.Add((p.Start, p.Start + p.Length));
                    previousMatch = p.Match;
                }
                break;
            case Behavior.MergedWithNext:
                for (int i = parts.Count - 1; i >= 0; i--)
                {
                    var p = parts[i];
                    if (p.Match && !previousMatch && spans.Count > 0) spans[^1] = (p.Start, spans[^1].End);
                    else spans.Add((p.Start, p.Start + p.Length));
                    previousMatch = p.Match;
                }
                spans.Reverse();
                break;
            case Behavior.Contiguous:
                foreach (var p in parts)
                {
                    if (p.Match == previousMatch && spans.Count > 0) spans[^1] = (spans[^1].Start, p.Start + p.Length);
                    else spans.Add((p.Start, p.Start + p.Length));
                    previousMatch = p.Match;
                }
                break;
        }
        var words = new List<string>(spans.Count);
        foreach (var (start, end) in spans) if (end > start) words.Add(word[start..end]);
        return words;
    }
}
