using System.Text.RegularExpressions;
using System.Text;
using AdapterService.Core.Data;
using AdapterService.Core.Text;

namespace AdapterService.Core.Tests.Text;

public class BpeTrainerTests
{
    static readonly string[] Tiny =
    [
        "the cat sat on the mat", "the cat ate the rat", "that is that", "a hat, a bat, a cat!", "the the the",
        "Thé café: naïve ünïcode 😀😀", "tabs\tand  spaces\n\nnewlines",
    ];

    /// <summary>
    /// BPE as the papers describe it, with nothing incremental: every round, count all adjacent pairs of all words from
    /// scratch, merge the most frequent (ties: ordinal order of left, then right), stop when the vocabulary is full.
    /// </summary>
    static List<(string, string)> NaiveMerges(IEnumerable<string> texts, int vocabSize, int specials)
    {
        var words = new List<List<string>>();
        foreach (var text in texts)
            foreach (Match m in Regex.Matches(text, HfTokenizer.Gpt2Pattern))
                words.Add(Encoding.UTF8.GetBytes(m.Value).Select(b => ByteLevel.Encode[b].ToString()).ToList());
        var vocab = new HashSet<string>(Enumerable.Range(0, 256).Select(b => ByteLevel.Encode[b].ToString()));
        var merges = new List<(string, string)>();
        while (vocab.Count + specials < vocabSize)
        {
            var counts = new Dictionary<(string, string), int>();
            foreach (var w in words)
                for (int i = 0; i + 1 < w.Count; i++) counts[(w[i], w[i + 1])] = counts.GetValueOrDefault((w[i], w[i + 1])) + 1;
            if (counts.Count == 0) break;
            var best = counts.OrderByDescending(c => c.Value).ThenBy(c => c.Key.Item1, StringComparer.Ordinal).ThenBy(c => c.Key.Item2, StringComparer.Ordinal).First();
            if (best.Value < 2) break;
            merges.Add(best.Key);
            vocab.Add(best.Key.Item1 + best.Key.Item2);
            foreach (var w in words)
                for (int i = 0; i + 1 < w.Count; i++)
                    if (w[i] == best.Key.Item1 && w[i + 1] == best.Key.Item2) { w[i] += w[i + 1]; w.RemoveAt(i + 1); }
        }
        return merges;
    }

    [Theory]
    [InlineData(270)]
    [InlineData(300)]
    [InlineData(400)]   // past the point where no pair repeats: both stop early
    public void MergesMatchANaiveReference(int vocabSize)
    {
        var trained = BpeTrainer.Train(Tiny, vocabSize, ["<|endoftext|>"]);
        var expected = NaiveMerges(Tiny, vocabSize, specials: 1);
        Assert.True(expected.Count >= Math.Min(13, vocabSize - 257), $"the reference learned only {expected.Count} merges");
        Assert.Equal(expected, trained.Merges.Select(m => (m.Left, m.Right)).ToList());
        Assert.Equal("<|endoftext|>", trained.Tokens[0]);
        Assert.Equal(trained.Tokens.Count, trained.Tokens.Distinct().Count());
        Assert.True(trained.Tokens.Count <= vocabSize);
    }

    [Fact]
    public void VocabularyTooSmallForTheBytesIsRefused() =>
        Assert.Throws<ArgumentException>(() => BpeTrainer.Train(Tiny, 200, ["<|endoftext|>"]));

    static string WriteFolder(BpeVocabulary vocabulary)
    {
        var folder = Directory.CreateTempSubdirectory("bpe-").FullName;
        vocabulary.Save(folder, "<|endoftext|>", "<|endoftext|>", maxLength: 64);
        File.WriteAllText(Path.Combine(folder, "config.json"), """{"model_type": "llama", "bos_token_id": 0, "eos_token_id": 0}""");
        return folder;
    }

    [Fact]
    public void WrittenFolderLoadsAndRoundTripsAnyText()
    {
        var corpus = Enumerable.Repeat(Tiny, 5).SelectMany(t => t).Append("Don't panic. It's 42, isn't it? I'll see; we've won.").ToList();
        var vocabulary = BpeTrainer.Train(corpus, 400, ["<|endoftext|>"]);
        var folder = WriteFolder(vocabulary);
        try
        {
            var tokenizer = Assert.IsType<HfTokenizer>(TextTokenizers.Read(folder));
            Assert.Equal(0, tokenizer.SpecialTokens["<|endoftext|>"]);
            Assert.Equal([0], tokenizer.EosIds);
            // Learned merges are used: a frequent word is one token.
            Assert.Single(tokenizer.Encode(" cat"));
            Assert.Equal(vocabulary.Tokens.ToList().IndexOf(" cat".Replace(' ', 'Ġ')), tokenizer.Encode(" cat")[0]);

            var random = new Random(7);
            var texts = new List<string> { "", "the cat sat on the mat", "Thé café 😀 ✓ \u0000\u0007 \r\n\t", "<|endoftext|> between <|endoftext|>" };
            for (int i = 0; i < 50; i++)
                texts.Add(new string(Enumerable.Range(0, random.Next(1, 40)).Select(_ => (char)random.Next(1, 0xD7FF)).ToArray()));
            foreach (var text in texts)
            {
                var ids = tokenizer.Encode(text);
                Assert.Equal(text, tokenizer.Decode(ids, skipSpecialTokens: false));
                var stream = new StreamingDetokenizer(tokenizer);
                Assert.Equal(text.Replace("<|endoftext|>", ""), string.Concat(ids.Select(stream.Push)) + stream.Flush());
            }
            // Any byte is a token of its own, written in the byte-level alphabet.
            for (int b = 0; b < 256; b++)
                Assert.Equal(ByteLevel.Encode[b].ToString(), tokenizer.IdToToken(vocabulary.Tokens.ToList().IndexOf(ByteLevel.Encode[b].ToString())));
        }
        finally { Directory.Delete(folder, recursive: true); }
    }

    [Fact]
    public void FortuneFilesSplitOnPercentLines()
    {
        var entries = FortunesCorpus.Split("First one.\n%\nSecond,\n  two lines.\n%\n%\nThird\n").ToList();
        Assert.Equal(["First one.", "Second,\n  two lines.", "Third"], entries);
    }
}
