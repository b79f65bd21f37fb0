using System.Runtime.CompilerServices;
using System.Text;
using AdapterService.Core.Text;

namespace AdapterService.Core.Inference.Constraints;

/// <summary>
/// The bytes each token of a tokenizer writes, once per tokenizer, and a trie over them, so a grammar can find the
/// tokens it allows by walking shared prefixes once. Byte-level BPE tokens map through GPT-2's byte alphabet (a token
/// may be part of a UTF-8 character: bytes, not text); byte-fallback tokens (&lt;0xNN&gt;) are their byte; other tokens
/// are what decoding adds after a plain token (so SentencePiece's ▁ is a space). Special and added tokens write no text
/// a grammar may use and are left out.
/// </summary>
public sealed class TokenVocabulary
{
    static readonly ConditionalWeakTable<ITextTokenizer, TokenVocabulary> Cache = [];

    /// <summary>Ids below this are tokens of the tokenizer.</summary>
    public int Size { get; }
    /// <summary>The bytes of each id; null for ids that write no usable text.</summary>
    public byte[]?[] Bytes { get; }
    /// <summary>Whether every printable ASCII byte is one token (then a grammar over JSON never dead-ends).</summary>
    public bool SpellsAscii { get; }
    public int MaxTokenBytes { get; }


    public static TokenVocabulary For(ITextTokenizer tokenizer) => Cache.GetValue(tokenizer, t => new TokenVocabulary(t));

    TokenVocabulary(ITextTokenizer tokenizer)
    {
        Size = tokenizer.VocabularySize;
        Bytes = new byte[]?[Size];
        var added = tokenizer is HfTokenizer hf ? hf.SpecialTokens.Values.ToHashSet() : [];
        bool byteLevel = tokenizer is HfTokenizer { Kind: "byte-level BPE" };
        int anchor = tokenizer is ByteTokenizer ? -1 : tokenizer.Encode("a", addSpecialTokens: false) is [var a] ? a : -1;
        string anchorText = anchor >= 0 ? Raw(tokenizer, [anchor]) : "";
        for (int id = 0; id < Size; id++)
        {
            if (added.Contains(id)) continue;
            string? token = tokenizer.IdToToken(id);
            Bytes[id] = token is null ? null
                : tokenizer is ByteTokenizer ? (ByteTokenizer.IsByte(id) ? [(byte)id] : null)
                : byteLevel ? ByteLevelBytes(token)
                : token.Length == 6 && token.StartsWith("<0x", StringComparison.Ordinal) && token[5] == '>'
                    && byte.TryParse(token.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b) ? [b]
                : DecodedBytes(tokenizer, anchor, anchorText, id);
            if (Bytes[id] is { Length: 0 }) Bytes[id] = null;
        }
        var single = new bool[128];
        foreach (var bytes in Bytes) if (bytes is [var only] && only < 128) single[only] = true;
        SpellsAscii = Enumerable.Range(0x20, 0x7F - 0x20).All(b => single[b]) && single['\n'];
        MaxTokenBytes = Bytes.Max(b => b?.Length ?? 0);

        All = new Trie(this, Enumerable.Range(0, Size).Where(i => Bytes[i] is not null));
        PlainChars = Bytes.Select(CountPlain).ToArray();
        MaxPlainChars = PlainChars.Max();
        NotPlain = new Trie(this, Enumerable.Range(0, Size).Where(i => Bytes[i] is not null && PlainChars[i] < 0));
        byPlainChars = Enumerable.Range(0, Size).Where(i => PlainChars[i] >= 0).OrderBy(i => PlainChars[i]).ToArray();
    }

    /// <summary>Every token with bytes.</summary>
    public Trie All { get; }
    /// <summary>The tokens that are not plain string content (see <see cref="PlainChars"/>): what a string's mask must still walk.</summary>
    public Trie NotPlain { get; }
    /// <summary>
    /// Per token: how many characters it adds inside a JSON string when all its bytes are plain content (no quote, backslash
    /// or control character; whole, valid UTF-8 characters); −1 otherwise. Inside a string such a token is allowed exactly
    /// when the string may take that many more characters, whatever else the state is.
    /// </summary>
    public int[] PlainChars { get; }
    public int MaxPlainChars { get; }
    readonly int[] byPlainChars;
    readonly Dictionary<int, ulong[]> plainUpTo = [];

    /// <summary>The bit set of plain tokens of at most <paramref name="chars"/> characters (kept per count).</summary>
    public ulong[] PlainUpTo(int chars)
    {
        chars = Math.Min(chars, MaxPlainChars);
        lock (plainUpTo)
        {
            if (plainUpTo.TryGetValue(chars, out var bits)) return bits;
            bits = new ulong[(Size + 63) / 64];
            foreach (int id in byPlainChars)
            {
                if (PlainChars[id] > chars) break;
                bits[id >> 6] |= 1UL << id;
            }
            return plainUpTo[chars] = bits;
        }
    }

    static int CountPlain(byte[]? bytes)
    {
        if (bytes is null) return -1;
        int chars = 0;
        for (int i = 0; i < bytes.Length;)
        {
            byte b = bytes[i];
            if (b < 0x20 || b == '"' || b == '\\') return -1;
            int length = b < 0x80 ? 1 : b is >= 0xC2 and <= 0xDF ? 2 : b is >= 0xE0 and <= 0xEF ? 3 : b is >= 0xF0 and <= 0xF4 ? 4 : 0;
            if (length == 0 || i + length > bytes.Length) return -1;
            if (length > 1 && (System.Text.Rune.DecodeFromUtf8(bytes.AsSpan(i, length), out _, out int n) != System.Buffers.OperationStatus.Done || n != length)) return -1;
            i += length;
            chars++;
        }
        return chars;
    }

    /// <summary>A trie over some tokens' bytes: node 0 is the root; a node's children are contiguous (ChildStart .. + ChildCount), each with its byte; the ids ending at a node are TokenIds[TokenStart .. + TokenCount].</summary>
    public sealed class Trie
    {
        internal readonly int[] ChildStart, ChildCount, TokenStart, TokenCount, TokenIds;
        internal readonly byte[] Label;
        public int Nodes => Label.Length;

        public Trie(TokenVocabulary vocabulary, IEnumerable<int> tokens)
        {
            var bytes = vocabulary.Bytes;
            // Ids sorted by their bytes; each trie node covers a range of them sharing its prefix.
            var ids = tokens.ToArray();
            Array.Sort(ids, (x, y) => bytes[x].AsSpan().SequenceCompareTo(bytes[y]));
            TokenIds = ids;
            var childStart = new List<int> { 0 }; var childCount = new List<int> { 0 }; var tokenStart = new List<int> { 0 };
            var tokenCount = new List<int> { 0 }; var label = new List<byte> { 0 };
            var stack = new Stack<(int Node, int Lo, int Hi, int Depth)>();
            stack.Push((0, 0, ids.Length, 0));
            while (stack.Count > 0)
            {
                var (node, lo, hi, depth) = stack.Pop();
                int i = lo;
                while (i < hi && bytes[ids[i]]!.Length == depth) i++;   // tokens that end here sort first
                (tokenStart[node], tokenCount[node]) = (lo, i - lo);
                var groups = new List<(int Lo, int Hi)>();
                while (i < hi)
                {
                    int j = i + 1;
                    byte b = bytes[ids[i]]![depth];
                    while (j < hi && bytes[ids[j]]![depth] == b) j++;
                    groups.Add((i, j));
                    i = j;
                }
                (childStart[node], childCount[node]) = (childStart.Count, groups.Count);
                foreach (var (glo, ghi) in groups)
                {
                    int child = childStart.Count;
                    childStart.Add(0); childCount.Add(0); tokenStart.Add(0); tokenCount.Add(0); label.Add(bytes[ids[glo]]![depth]);
                    stack.Push((child, glo, ghi, depth + 1));
                }
            }
            (ChildStart, ChildCount, TokenStart, TokenCount, Label) = ([.. childStart], [.. childCount], [.. tokenStart], [.. tokenCount], [.. label]);
        }
    }



    /// <summary>Decoding as constrained output is streamed: without clean_up_tokenization_spaces (which would drop bytes the grammar counted).</summary>
    public static string Raw(ITextTokenizer tokenizer, IReadOnlyList<int> ids) =>
        tokenizer is HfTokenizer hf ? hf.Decode(ids, skipSpecialTokens: false, cleanUpSpaces: false) : tokenizer.Decode(ids, skipSpecialTokens: false);

    static byte[]? ByteLevelBytes(string token)
    {
        var bytes = new byte[token.Length];
        for (int i = 0; i < token.Length; i++)
            if (!ByteLevel.Decode.TryGetValue(token[i], out bytes[i])) return null;
        return bytes;
    }

    /// <summary>What decoding adds after a plain token (a leading space is kept that way); null when it is not whole characters.</summary>
    static byte[]? DecodedBytes(ITextTokenizer tokenizer, int anchor, string anchorText, int id)
    {
        if (tokenizer.Decode([id], skipSpecialTokens: true).Length == 0) return null;   // special, or no text
        string text = Raw(tokenizer, anchor >= 0 ? [anchor, id] : [id]);
        if (!text.StartsWith(anchorText, StringComparison.Ordinal)) return null;
        text = text[anchorText.Length..];
        return text.Contains('\uFFFD') ? null : Encoding.UTF8.GetBytes(text);
    }
}
