using System.Text.Json;

namespace AdapterService.Core.Text;

/// <summary>An entry of tokenizer.json's <c>added_tokens</c>.</summary>
sealed record AddedToken(int Id, string Content, bool Special, bool Normalized, bool LeftStrip, bool RightStrip, bool SingleWord);

/// <summary>
/// Finds added tokens in text before the model sees it, as Hugging Face does: at each position the longest token that
/// starts there, <c>lstrip</c>/<c>rstrip</c> taking the white space beside it, <c>single_word</c> only between non-word
/// characters. Tokens with <c>normalized</c> are looked for again in the normalized text.
/// </summary>
sealed class AddedTokens
{
    /// <summary>A piece of text: an added token, or text between them (<see cref="Token"/> null).</summary>
    public readonly record struct Piece(string Text, AddedToken? Token);

    readonly Trie raw, normalized;
    public IReadOnlyList<AddedToken> All { get; }
    /// <summary>Content (and normalized content) → token.</summary>
    public IReadOnlyDictionary<string, AddedToken> ByContent { get; }

    public AddedTokens(IReadOnlyList<AddedToken> tokens, Func<string, string>? normalizer)
    {
        All = tokens;
        var byContent = new Dictionary<string, AddedToken>(StringComparer.Ordinal);
        raw = new Trie();
        normalized = new Trie();
        foreach (var token in tokens)
        {
            byContent[token.Content] = token;
            if (token.Normalized && normalizer is not null)
            {
                string content = normalizer(token.Content);
                byContent[content] = token;
                normalized.Add(content, token);
            }
            else raw.Add(token.Content, token);
        }
        ByContent = byContent;
    }

    public static AddedToken Parse(JsonElement e, string path)
    {
        if (Json.OptionalString(e, "content") is not { Length: > 0 } content || !e.TryGetProperty("id", out var id) || Json.Int(id) is not { } tokenId || tokenId < 0)
            throw new InvalidDataException($"{path}: an added_tokens entry lacks its content or id: {e.GetRawText()}");
        bool special = Json.Bool(e, "special", false);
        return new AddedToken(tokenId, content, special, Json.Bool(e, "normalized", !special), Json.Bool(e, "lstrip", false),
            Json.Bool(e, "rstrip", false), Json.Bool(e, "single_word", false));
    }

    /// <summary>The text cut at the tokens matched as written (those not normalized).</summary>
    public List<Piece> SplitRaw(string text) => Split(raw, text);

    /// <summary>Normalized text cut at the tokens matched after normalization.</summary>
    public List<Piece> SplitNormalized(string text) => Split(normalized, text);

    List<Piece> Split(Trie trie, string text)
    {
        var pieces = new List<Piece>();
        if (trie.IsEmpty) { pieces.Add(new Piece(text, null)); return pieces; }
        int start = 0;
        for (int i = 0; i < text.Length;)
        {
            if (trie.LongestMatch(text, i) is not { } token || token.SingleWord && !StandsAlone(text, i, token.Content.Length)) { i++; continue; }
            if (i > start) pieces.Add(new Piece(text[start..i], null));
            pieces.Add(new Piece(token.Content, token));
            i += token.Content.Length;
            start = i;
        }
        if (start < text.Length) pieces.Add(new Piece(text[start..], null));
        // lstrip / rstrip: the white space beside the token goes with it.
        for (int i = 0; i < pieces.Count; i++)
        {
            if (pieces[i].Token is not { } token) continue;
            if (token.LeftStrip && i > 0 && pieces[i - 1].Token is null) pieces[i - 1] = pieces[i - 1] with { Text = pieces[i - 1].Text.TrimEnd() };
            if (token.RightStrip && i + 1 < pieces.Count && pieces[i + 1].Token is null) pieces[i + 1] = pieces[i + 1] with { Text = pieces[i + 1].Text.TrimStart() };
        }
        return pieces;
    }

    static bool StandsAlone(string text, int start, int length) =>
        (start == 0 || !IsWordChar(text[start - 1])) && (start + length == text.Length || !IsWordChar(text[start + length]));

    static bool IsWordChar(char c) => char.IsLetterOrDigit(c) || c == '_';

    sealed class Trie
    {
        readonly Dictionary<(int Node, char C), int> edges = [];
        readonly List<AddedToken?> ends = [null];

        public bool IsEmpty => edges.Count == 0;

        public void Add(string content, AddedToken token)
        {
            int node = 0;
            foreach (char c in content)
            {
                if (!edges.TryGetValue((node, c), out int child)) { child = ends.Count; ends.Add(null); edges[(node, c)] = child; }
                node = child;
            }
            ends[node] = token;   // a later entry with the same content wins, as in the reference
        }

        public AddedToken? LongestMatch(string text, int start)
        {
            AddedToken? match = null;
            int node = 0;
            for (int i = start; i < text.Length && edges.TryGetValue((node, text[i]), out node); i++)
                if (ends[node] is { } token) match = token;
            return match;
        }
    }
}
