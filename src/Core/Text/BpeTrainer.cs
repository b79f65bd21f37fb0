using System.Runtime.InteropServices;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace AdapterService.Core.Text;

/// <summary>
/// A trained byte-level BPE tokenizer: <see cref="Tokens"/> in id order (special tokens first, then the 256 byte
/// characters, then one per merge that made a new token) and the merges in the order they were learned.
/// </summary>
public sealed record BpeVocabulary(IReadOnlyList<string> Tokens, IReadOnlyList<(string Left, string Right)> Merges, IReadOnlyList<string> SpecialTokens)
{
    /// <summary>
    /// Writes <c>tokenizer.json</c> (GPT-2's byte-level pre-tokenizer and decoder, BPE model, special tokens as added
    /// tokens) and <c>tokenizer_config.json</c> naming <paramref name="bosToken"/> and <paramref name="eosToken"/>.
    /// The ids of those go into the model's config.json, which is where <see cref="HfTokenizer"/> reads them from.
    /// </summary>
    public void Save(string folder, string bosToken, string eosToken, int maxLength)
    {
        Directory.CreateDirectory(folder);
        var byteLevel = new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true };
        var tokenizer = new
        {
            version = "1.0", truncation = (object?)null, padding = (object?)null,
            added_tokens = SpecialTokens.Select(t => new { id = Tokens.ToList().IndexOf(t), content = t, single_word = false, lstrip = false, rstrip = false, normalized = false, special = true }),
            normalizer = (object?)null, pre_tokenizer = byteLevel, post_processor = byteLevel, decoder = byteLevel,
            model = new
            {
                type = "BPE", dropout = (object?)null, unk_token = (object?)null, continuing_subword_prefix = "", end_of_word_suffix = "",
                fuse_unk = false, byte_fallback = false, ignore_merges = false,
                vocab = Tokens.Select((t, id) => (t, id)).ToDictionary(x => x.t, x => x.id),
                merges = Merges.Select(m => new[] { m.Left, m.Right }),
            },
        };
        // Tokens written as they are (Ġ, <|endoftext|>), as Hugging Face writes them, rather than as \u escapes.
        var indented = new JsonSerializerOptions { WriteIndented = true, Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        File.WriteAllText(Path.Combine(folder, HfTokenizer.TokenizerFile), JsonSerializer.Serialize(tokenizer, indented));
        File.WriteAllText(Path.Combine(folder, "tokenizer_config.json"), JsonSerializer.Serialize(new
        {
            tokenizer_class = "GPT2Tokenizer", bos_token = bosToken, eos_token = eosToken, unk_token = eosToken,
            model_max_length = maxLength, add_prefix_space = false, clean_up_tokenization_spaces = false,
        }, indented));
    }
}

/// <summary>
/// Trains a byte-level BPE tokenizer the way GPT-2's was: text is split with GPT-2's pre-tokenizer pattern, each piece
/// written in the byte-level alphabet, and the most frequent adjacent pair of symbols is merged until the vocabulary
/// is full. Pieces are counted once (a corpus has far fewer distinct words than words), and pair counts are updated
/// only for the words a merge touches, so a few-MB corpus trains in seconds.
/// </summary>
public static class BpeTrainer
{
    /// <summary>
    /// Learns merges until there are <paramref name="vocabSize"/> tokens (special tokens and the 256 bytes included) or
    /// no pair occurs <paramref name="minFrequency"/> times. Ties go to the pair whose left, then right, token sorts
    /// first (ordinal), so training is deterministic.
    /// </summary>
    public static BpeVocabulary Train(IEnumerable<string> texts, int vocabSize, IReadOnlyList<string> specialTokens, int minFrequency = 2)
    {
        minFrequency = Math.Max(1, minFrequency);
        if (vocabSize < specialTokens.Count + 256)
            throw new ArgumentException($"vocabSize {vocabSize} is below the {specialTokens.Count} special tokens + 256 bytes it must hold");
        var tokens = new List<string>(specialTokens);
        tokens.AddRange(ByteLevel.Encode.Select(c => c.ToString()));
        var ids = tokens.Select((t, i) => (t, i)).ToDictionary(x => x.t, x => x.i, StringComparer.Ordinal);

        var (words, counts) = CountWords(texts, ids);
        var pairCounts = new Dictionary<long, long>();
        var pairWords = new Dictionary<long, HashSet<int>>();
        for (int w = 0; w < words.Count; w++) AddPairs(words[w], counts[w], w, +1, pairCounts, pairWords);

        var merges = new List<(string, string)>();
        while (tokens.Count < vocabSize && Best(pairCounts, tokens, minFrequency) is { } best)
        {
            int left = (int)(best >> 32), right = (int)best;
            string merged = tokens[left] + tokens[right];
            if (!ids.TryGetValue(merged, out int id)) { id = tokens.Count; tokens.Add(merged); ids[merged] = id; }
            merges.Add((tokens[left], tokens[right]));
            foreach (int w in pairWords[best])
            {
                var word = words[w];
                if (!Contains(word, left, right)) continue;   // the index keeps words a merge changed since
                AddPairs(word, counts[w], w, -1, pairCounts, pairWords);
                words[w] = word = Merge(word, left, right, id);
                AddPairs(word, counts[w], w, +1, pairCounts, pairWords);
            }
            pairCounts.Remove(best);
            pairWords.Remove(best);
        }
        return new BpeVocabulary(tokens, merges, [.. specialTokens]);
    }

    /// <summary>Distinct pre-tokenized pieces as byte-symbol ids, with how often each occurs.</summary>
    static (List<int[]> Words, List<long> Counts) CountWords(IEnumerable<string> texts, Dictionary<string, int> ids)
    {
        var regex = new Regex(HfTokenizer.Gpt2Pattern, RegexOptions.Compiled);
        var pieces = new Dictionary<string, long>(StringComparer.Ordinal);
        foreach (var text in texts)
            foreach (var match in regex.EnumerateMatches(text))
                CollectionsMarshal.GetValueRefOrAddDefault(pieces, text.Substring(match.Index, match.Length), out _)++;
        var words = new List<int[]>(pieces.Count);
        var counts = new List<long>(pieces.Count);
        foreach (var (piece, count) in pieces.OrderBy(p => p.Key, StringComparer.Ordinal))
        {
            words.Add(ByteLevel.FromText(piece).Select(c => ids[c.ToString()]).ToArray());
            counts.Add(count);
        }
        return (words, counts);
    }

    static long Key(int left, int right) => (long)left << 32 | (uint)right;

    static void AddPairs(int[] word, long count, int index, int sign, Dictionary<long, long> pairCounts, Dictionary<long, HashSet<int>> pairWords)
    {
        for (int i = 0; i + 1 < word.Length; i++)
        {
            long key = Key(word[i], word[i + 1]);
            ref long total = ref CollectionsMarshal.GetValueRefOrAddDefault(pairCounts, key, out _);
            total += sign * count;
            if (total == 0) pairCounts.Remove(key);
            if (sign > 0)
            {
                ref var set = ref CollectionsMarshal.GetValueRefOrAddDefault(pairWords, key, out _);
                (set ??= []).Add(index);
            }
        }
    }

    /// <summary>The most frequent pair (ties: ordinal order of left, then right token), or null when none reaches the minimum.</summary>
    static long? Best(Dictionary<long, long> pairCounts, List<string> tokens, int minFrequency)
    {
        long? best = null;
        long bestCount = 0;
        foreach (var (key, count) in pairCounts)
        {
            if (count < bestCount || count < minFrequency) continue;
            if (count == bestCount && Compare(key, best!.Value, tokens) >= 0) continue;
            (best, bestCount) = (key, count);
        }
        return best;
    }

    static int Compare(long a, long b, List<string> tokens)
    {
        int c = string.CompareOrdinal(tokens[(int)(a >> 32)], tokens[(int)(b >> 32)]);
        return c != 0 ? c : string.CompareOrdinal(tokens[(int)a], tokens[(int)b]);
    }

    static bool Contains(int[] word, int left, int right)
    {
        for (int i = 0; i + 1 < word.Length; i++)
            if (word[i] == left && word[i + 1] == right) return true;
        return false;
    }

    /// <summary>The word with every occurrence of (left, right), taken left to right without overlap, replaced by <paramref name="merged"/>.</summary>
    static int[] Merge(int[] word, int left, int right, int merged)
    {
        var result = new List<int>(word.Length);
        for (int i = 0; i < word.Length; i++)
        {
            if (i + 1 < word.Length && word[i] == left && word[i + 1] == right) { result.Add(merged); i++; }
            else result.Add(word[i]);
        }
        return [.. result];
    }
}
