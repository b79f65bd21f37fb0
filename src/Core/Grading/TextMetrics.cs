namespace AdapterService.Core.Grading;

/// <summary>
/// The <c>text_similarity</c> grader's metrics, each a score in [0, 1] of a candidate against one reference, by their
/// OpenAI names. A registry: a metric is a row here, and those OpenAI lists that need what this service does not have
/// are rows of <see cref="Unavailable"/> with the reason (so the error can say why, not just "unknown").
/// </summary>
public static class TextMetrics
{
    public static IReadOnlyDictionary<string, Func<string, string, double>> All { get; } = new Dictionary<string, Func<string, string, double>>
    {
        ["fuzzy_match"] = FuzzyMatch,
        ["bleu"] = Bleu,
        ["gleu"] = Gleu,
        ["rouge_1"] = (c, r) => RougeN(c, r, 1),
        ["rouge_2"] = (c, r) => RougeN(c, r, 2),
        ["rouge_3"] = (c, r) => RougeN(c, r, 3),
        ["rouge_4"] = (c, r) => RougeN(c, r, 4),
        ["rouge_5"] = (c, r) => RougeN(c, r, 5),
        ["rouge_l"] = RougeL,
    };

    public static IReadOnlyDictionary<string, string> Unavailable { get; } = new Dictionary<string, string>
    {
        ["cosine"] = "cosine similarity compares embeddings, and this service serves no embedding model",
        ["meteor"] = "METEOR matches stems and WordNet synonyms, which this service does not have (an exact-match-only METEOR would score differently)",
    };

    /// <summary>
    /// Normalised Indel similarity of the two strings' characters, 2·LCS / (|a| + |b|) (rapidfuzz's <c>fuzz.ratio</c> / 100;
    /// 1 for two empty strings).
    /// </summary>
    public static double FuzzyMatch(string candidate, string reference)
    {
        int total = candidate.Length + reference.Length;
        return total == 0 ? 1 : 2.0 * Lcs(candidate.ToCharArray(), reference.ToCharArray()) / total;
    }

    /// <summary>
    /// Sentence BLEU (Papineni et al., "BLEU: a Method for Automatic Evaluation of Machine Translation", ACL 2002,
    /// https://aclanthology.org/P02-1040/): the geometric mean of the clipped n-gram precisions, n = 1..4, times the brevity
    /// penalty exp(1 − r/c) when the candidate is shorter than the reference. Sentence-level as sacrebleu's
    /// <c>sentence_bleu</c>: orders longer than the candidate are left out (effective order), and an order with no match
    /// counts 1 / (2^k · its n-gram count) for the k-th such order ("exp" smoothing), so one missing 4-gram is not a 0.
    /// Tokens: <see cref="BleuTokens"/>, case kept.
    /// </summary>
    public static double Bleu(string candidate, string reference)
    {
        var (c, r) = (BleuTokens(candidate), BleuTokens(reference));
        if (c.Count == 0 || r.Count == 0) return 0;
        int orders = Math.Min(4, c.Count);
        double logSum = 0, smooth = 1;
        for (int n = 1; n <= orders; n++)
        {
            var (matches, total) = ClippedMatches(c, r, n);
            double precision = matches > 0 ? matches / (double)total : 1 / ((smooth *= 2) * total);
            logSum += Math.Log(precision);
        }
        double brevity = c.Count < r.Count ? Math.Exp(1 - r.Count / (double)c.Count) : 1;
        return brevity * Math.Exp(logSum / orders);
    }

    /// <summary>
    /// Google-BLEU (Wu et al., "Google's Neural Machine Translation System", 2016, https://arxiv.org/abs/1609.08144, §7):
    /// all n-grams of orders 1..4 counted together, matches / max(candidate n-grams, reference n-grams), i.e. the minimum of
    /// precision and recall (NLTK's <c>sentence_gleu</c>). Tokens as BLEU's.
    /// </summary>
    public static double Gleu(string candidate, string reference)
    {
        var (c, r) = (BleuTokens(candidate), BleuTokens(reference));
        long matches = 0, candidateTotal = 0, referenceTotal = 0;
        for (int n = 1; n <= 4; n++)
        {
            var (m, total) = ClippedMatches(c, r, n);
            matches += m;
            candidateTotal += total;
            referenceTotal += Math.Max(0, r.Count - n + 1);
        }
        long denominator = Math.Max(candidateTotal, referenceTotal);
        return denominator == 0 ? 0 : matches / (double)denominator;
    }

    /// <summary>
    /// ROUGE-N F1 (Lin, "ROUGE: A Package for Automatic Evaluation of Summaries", 2004, https://aclanthology.org/W04-1013/):
    /// clipped n-gram overlap over the candidate's n-grams (precision) and the reference's (recall). Tokens:
    /// <see cref="RougeTokens"/>, as Google's rouge-score package without stemming.
    /// </summary>
    public static double RougeN(string candidate, string reference, int n)
    {
        var (c, r) = (RougeTokens(candidate), RougeTokens(reference));
        var (overlap, candidateTotal) = ClippedMatches(c, r, n);
        int referenceTotal = Math.Max(0, r.Count - n + 1);
        return F1(overlap, candidateTotal, referenceTotal);
    }

    /// <summary>ROUGE-L F1 (Lin 2004, §3): the longest common subsequence of tokens over the candidate's length and the reference's.</summary>
    public static double RougeL(string candidate, string reference)
    {
        var (c, r) = (RougeTokens(candidate), RougeTokens(reference));
        return F1(Lcs(c.ToArray(), r.ToArray()), c.Count, r.Count);
    }

    static double F1(long overlap, long candidateTotal, long referenceTotal)
    {
        if (overlap == 0 || candidateTotal == 0 || referenceTotal == 0) return 0;
        double precision = overlap / (double)candidateTotal, recall = overlap / (double)referenceTotal;
        return 2 * precision * recall / (precision + recall);
    }

    /// <summary>The candidate's n-grams that the reference has too (each counted at most as often as the reference has it), and how many n-grams the candidate has.</summary>
    static (long Matches, long Total) ClippedMatches(List<string> candidate, List<string> reference, int n)
    {
        var counts = new Dictionary<string, int>();
        for (int i = 0; i + n <= reference.Count; i++)
        {
            var key = string.Join('\u0001', reference.Skip(i).Take(n));
            counts[key] = counts.GetValueOrDefault(key) + 1;
        }
        long matches = 0, total = 0;
        for (int i = 0; i + n <= candidate.Count; i++, total++)
        {
            var key = string.Join('\u0001', candidate.Skip(i).Take(n));
            if (counts.GetValueOrDefault(key) > 0) { counts[key]--; matches++; }
        }
        return (matches, total);
    }

    /// <summary>Length of the longest common subsequence (dynamic programming over one row).</summary>
    static int Lcs<T>(T[] a, T[] b)
    {
        var row = new int[b.Length + 1];
        foreach (var x in a)
        {
            int diagonal = 0;
            for (int j = 1; j <= b.Length; j++)
            {
                int above = row[j];
                row[j] = EqualityComparer<T>.Default.Equals(x, b[j - 1]) ? diagonal + 1 : Math.Max(row[j], row[j - 1]);
                diagonal = above;
            }
        }
        return row[b.Length];
    }

    /// <summary>BLEU's tokens: runs of letters and digits, and every other non-space character alone (as sacrebleu's 13a splits punctuation).</summary>
    public static List<string> BleuTokens(string text)
    {
        var tokens = new List<string>();
        for (int i = 0; i < text.Length;)
        {
            if (char.IsWhiteSpace(text[i])) { i++; continue; }
            int start = i;
            if (char.IsLetterOrDigit(text[i])) while (i < text.Length && char.IsLetterOrDigit(text[i])) i++;
            else i++;
            tokens.Add(text[start..i]);
        }
        return tokens;
    }

    /// <summary>ROUGE's tokens: lower-cased runs of letters and digits (everything else separates).</summary>
    public static List<string> RougeTokens(string text)
    {
        var tokens = new List<string>();
        for (int i = 0; i < text.Length;)
        {
            if (!char.IsLetterOrDigit(text[i])) { i++; continue; }
            int start = i;
            while (i < text.Length && char.IsLetterOrDigit(text[i])) i++;
            tokens.Add(text[start..i].ToLowerInvariant());
        }
        return tokens;
    }
}
