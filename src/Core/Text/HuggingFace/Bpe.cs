using System.Collections.Concurrent;
using System.Text.Json;

namespace AdapterService.Core.Text;

/// <summary>
/// tokenizer.json's BPE model: a word's characters (or their <c>&lt;0xNN&gt;</c> bytes with byte_fallback, else the unknown
/// token) merged pair by pair, always the lowest-ranked pair present and the leftmost among equals, with a heap of
/// candidate pairs so a long word costs O(n log n). Results of short words are cached.
/// </summary>
sealed class Bpe
{
    const int MaxCachedLength = 256, MaxCacheEntries = 100_000;

    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> vocab;
    readonly Dictionary<long, (int Rank, int Id)> merges;   // (left id, right id) → rank and merged id
    readonly int[] byteIds;                                  // <0xNN> ids with byte_fallback, else empty
    readonly int? unknown;
    readonly bool fuseUnknown, ignoreMerges;
    readonly string prefix, suffix;                          // continuing_subword_prefix, end_of_word_suffix
    readonly ConcurrentDictionary<string, int[]> cache = new(StringComparer.Ordinal);

    /// <summary>The end_of_word_suffix, which decoding turns back into a space.</summary>
    public string Suffix => suffix;

    /// <summary>The BPE model of tokenizer.json's <c>model</c>, over <paramref name="vocab"/>: the model's vocabulary with the added tokens over it (as the reference looks tokens up).</summary>
    public Bpe(JsonElement model, Dictionary<string, int> vocab, string path)
    {
        string where = $"{path}: model";
        this.vocab = vocab.GetAlternateLookup<ReadOnlySpan<char>>();
        prefix = Json.OptionalString(model, "continuing_subword_prefix") ?? "";
        suffix = Json.OptionalString(model, "end_of_word_suffix") ?? "";
        fuseUnknown = Json.Bool(model, "fuse_unk", false);
        ignoreMerges = Json.Bool(model, "ignore_merges", false);
        if (model.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() > 0)
            throw new InvalidDataException($"{where}: BPE dropout is not supported (it makes encoding random)");
        if (Json.OptionalString(model, "unk_token") is { } unk)
            unknown = vocab.TryGetValue(unk, out int id) ? id : throw new InvalidDataException($"{where}: unk_token '{unk}' is not in the vocabulary");
        byteIds = Json.Bool(model, "byte_fallback", false) ? ByteIds(vocab) : [];

        var list = Json.Array(model, "merges", where).ToList();
        merges = new Dictionary<long, (int, int)>(list.Count, PairComparer.Instance);
        for (int rank = 0; rank < list.Count; rank++)
        {
            var (left, right) = Pair(list[rank], rank, where);
            if (!vocab.TryGetValue(left, out int a) || !vocab.TryGetValue(right, out int b))
                throw new InvalidDataException($"{where}: merges[{rank}] ('{left}', '{right}') names a token missing from the vocabulary");
            string merged = left + (right.StartsWith(prefix, StringComparison.Ordinal) ? right[prefix.Length..] : right);
            if (!vocab.TryGetValue(merged, out int id))
                throw new InvalidDataException($"{where}: merges[{rank}] makes '{merged}', which is missing from the vocabulary");
            merges.TryAdd(Key(a, b), (rank, id));
        }
    }

    static (string, string) Pair(JsonElement merge, int rank, string where)
    {
        if (merge.ValueKind == JsonValueKind.String && merge.GetString()!.Split(' ') is [var a, var b]) return (a, b);
        // Newer files write each merge as a pair, which allows spaces inside tokens.
        if (merge.ValueKind == JsonValueKind.Array && merge.GetArrayLength() == 2
            && merge[0].ValueKind == JsonValueKind.String && merge[1].ValueKind == JsonValueKind.String)
            return (merge[0].GetString()!, merge[1].GetString()!);
        throw new InvalidDataException($"{where}: merges[{rank}] is neither \"a b\" nor [\"a\", \"b\"]");
    }

    static int[] ByteIds(Dictionary<string, int> vocab)
    {
        var ids = new int[256];
        for (int b = 0; b < 256; b++) ids[b] = vocab.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        return ids;
    }

    static long Key(int left, int right) => (long)left << 32 | (uint)right;

    /// <summary>long's own hash is its halves xor-ed, which sends pairs of nearby ids to few buckets; this mixes all bits.</summary>
    sealed class PairComparer : IEqualityComparer<long>
    {
        public static readonly PairComparer Instance = new();
        public bool Equals(long a, long b) => a == b;
        public int GetHashCode(long key) => (int)((ulong)key * 0x9E3779B97F4A7C15UL >> 32);
    }

    /// <summary>Appends the ids of <paramref name="word"/> to <paramref name="ids"/>.</summary>
    public void Encode(string word, List<int> ids)
    {
        if (word.Length == 0) return;
        if (ignoreMerges && vocab.TryGetValue(word, out int whole)) { ids.Add(whole); return; }
        if (cache.TryGetValue(word, out var cached)) { ids.AddRange(cached); return; }
        var result = Merge(word);
        if (word.Length < MaxCachedLength && cache.Count < MaxCacheEntries) cache.TryAdd(word, result);
        ids.AddRange(result);
    }

    int[] Merge(string word)
    {
        var symbols = Symbols(word);
        int n = symbols.Count;
        if (n < 2) return [.. symbols];
        var id = symbols.ToArray();
        var next = new int[n];
        var prev = new int[n];
        for (int i = 0; i < n; i++) { next[i] = i + 1 < n ? i + 1 : -1; prev[i] = i - 1; }
        var alive = new bool[n];
        Array.Fill(alive, true);
        var heap = new PriorityQueue<int, long>();
        void Push(int at)
        {
            if (at >= 0 && next[at] >= 0 && merges.TryGetValue(Key(id[at], id[next[at]]), out var m)) heap.Enqueue(at, (long)m.Rank << 32 | (uint)at);
        }
        for (int i = 0; i + 1 < n; i++) Push(i);
        while (heap.TryDequeue(out int at, out long priority))
        {
            // Entries go stale when a neighbour merged first; the pair there now must still be the one queued.
            if (!alive[at] || next[at] < 0 || !merges.TryGetValue(Key(id[at], id[next[at]]), out var m) || m.Rank != (int)(priority >> 32)) continue;
            int right = next[at];
            id[at] = m.Id;
            alive[right] = false;
            next[at] = next[right];
            if (next[at] >= 0) prev[next[at]] = at;
            Push(prev[at]);
            Push(at);
        }
        var result = new List<int>(n);
        for (int i = 0; i >= 0; i = next[i]) result.Add(id[i]);
        return [.. result];
    }

    /// <summary>The word's starting symbols: each character's id (with the subword prefix after the first, the word suffix on the last), else its bytes, else the unknown id.</summary>
    List<int> Symbols(string word)
    {
        var symbols = new List<int>(word.Length);
        bool pendingUnknown = false;
        Span<byte> utf8 = stackalloc byte[4];
        var buffer = new char[64];
        for (int i = 0; i < word.Length;)
        {
            int width = char.IsSurrogatePair(word, i) ? 2 : 1;
            var c = word.AsSpan(i, width);
            bool first = i == 0, last = i + width == word.Length;
            i += width;
            var lookup = c;
            if (!first && prefix.Length > 0 || last && suffix.Length > 0)
            {
                int length = (first ? 0 : prefix.Length) + width + (last ? suffix.Length : 0);
                var joined = length <= buffer.Length ? buffer.AsSpan(0, length) : new char[length];
                (first ? "" : prefix).AsSpan().CopyTo(joined);
                c.CopyTo(joined[(first ? 0 : prefix.Length)..]);
                (last ? suffix : "").AsSpan().CopyTo(joined[(length - (last ? suffix.Length : 0))..]);
                lookup = joined;
            }
            if (vocab.TryGetValue(lookup, out int id))
            {
                if (pendingUnknown) { symbols.Add(unknown!.Value); pendingUnknown = false; }
                symbols.Add(id);
                continue;
            }
            if (byteIds.Length > 0)
            {
                int count = System.Text.Encoding.UTF8.GetBytes(c, utf8);
                bool all = true;
                for (int b = 0; b < count; b++) all &= byteIds[utf8[b]] >= 0;
                if (all)
                {
                    for (int b = 0; b < count; b++) symbols.Add(byteIds[utf8[b]]);
                    continue;
                }
            }
            if (unknown is null) continue;   // without an unknown token the character is dropped, as the Rust tokenizers do
            if (pendingUnknown && !fuseUnknown) symbols.Add(unknown.Value);
            pendingUnknown = true;
        }
        if (pendingUnknown) symbols.Add(unknown!.Value);
        return symbols;
    }
}
