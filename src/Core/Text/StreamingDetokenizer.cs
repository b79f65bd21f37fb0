namespace AdapterService.Core.Text;

/// <summary>
/// The text of a generated sequence, token by token: the pieces it returns join to exactly
/// <c>Decode(all ids, skipSpecialTokens: true)</c>. Decoding is not token by token (a character's UTF-8 bytes span tokens,
/// Metaspace and Strip decoders drop the first token's space), so each new id is decoded within a window of the tokens
/// before it: the text of ids[prefix..] less that of ids[prefix..read], held back while it ends in U+FFFD (a character
/// not yet complete). Special tokens are left out before the window sees them, as the full decode leaves them out
/// before its decoder runs. With clean_up_tokenization_spaces the clean-up runs on the stream, holding back the end that
/// a later token could still change (" " before "."), so the joined pieces are cleaned up as the whole text would be.
/// One per sequence; not thread-safe. <paramref name="cleanUpSpaces"/> false decodes without the clean-up even where the
/// tokenizer asks for it (constrained output: the clean-up would drop bytes the grammar counted).
/// </summary>
public sealed class StreamingDetokenizer(ITextTokenizer tokenizer, bool cleanUpSpaces = true)
{
    readonly List<int> ids = [];
    readonly Dictionary<int, bool> isSpecial = [];
    readonly HfTokenizer? cleaning = tokenizer is HfTokenizer { CleansUpSpaces: true } hf ? hf : null;
    readonly bool cleanUp = cleanUpSpaces;
    readonly System.Text.StringBuilder pending = new();   // decoded text not yet cleaned up and returned
    int prefix, read;

    /// <summary>The text <paramref name="id"/> adds; empty while it is held back.</summary>
    public string Push(int id)
    {
        if (Special(id)) return "";
        ids.Add(id);
        string before = Decode(prefix, read), after = Decode(prefix, ids.Count);
        if (after.Length <= before.Length || after[^1] == '\uFFFD') return "";
        prefix = read;
        read = ids.Count;
        return Clean(after[before.Length..], final: false);
    }

    /// <summary>Whatever is held back, at the end of the sequence.</summary>
    public string Flush()
    {
        string before = Decode(prefix, read), after = Decode(prefix, ids.Count);
        prefix = read = ids.Count;
        return Clean(after.Length > before.Length ? after[before.Length..] : "", final: true);
    }

    bool Special(int id)
    {
        if (!isSpecial.TryGetValue(id, out bool special))
            isSpecial[id] = special = tokenizer.Decode([id], skipSpecialTokens: true) != tokenizer.Decode([id], skipSpecialTokens: false);
        return special;
    }

    string Decode(int from, int to)
    {
        var window = ids.GetRange(from, to - from);
        return cleaning is { } hf ? hf.Decode(window, skipSpecialTokens: false, cleanUpSpaces: false) : tokenizer.Decode(window, skipSpecialTokens: false);
    }

    /// <summary>The clean-up of the pending text up to its last character that no clean-up pattern contains: text cut there cleans up the same in parts.</summary>
    string Clean(string text, bool final)
    {
        if (cleaning is null || !cleanUp) return text;
        pending.Append(text);
        int cut = pending.Length;
        if (!final) while (cut > 0 && Decoders.CleanUpCannotSpan(pending[cut - 1]) is false) cut--;
        if (cut == 0) return "";
        string ready = pending.ToString(0, cut);
        pending.Remove(0, cut);
        return Decoders.CleanUp(ready);
    }
}
