namespace AdapterService.Core.Inference;

/// <summary>
/// Streams generated text while honouring stop sequences: text that could still become the start of a stop
/// sequence is held back until the next token tells.
/// </summary>
public sealed class StopSequences(IReadOnlyList<string>? stops)
{
    readonly string[] stops = stops?.Where(s => s.Length > 0).ToArray() ?? [];
    string pending = "";

    /// <summary>Adds new text; returns the text safe to emit and whether a stop sequence was hit (text after it dropped).</summary>
    public (string Emit, bool Stopped) Push(string text)
    {
        pending += text;
        int hit = stops.Select(s => pending.IndexOf(s, StringComparison.Ordinal)).Where(i => i >= 0).DefaultIfEmpty(-1).Min();
        if (hit >= 0)
        {
            var before = pending[..hit];
            pending = "";
            return (before, true);
        }
        int hold = stops.Select(HeldLength).DefaultIfEmpty(0).Max();
        var emit = pending[..^hold];
        pending = pending[^hold..];
        return (emit, false);
    }

    /// <summary>The text still held back, at the end of generation.</summary>
    public string Flush() { var rest = pending; pending = ""; return rest; }

    int HeldLength(string stop)
    {
        for (int n = Math.Min(stop.Length - 1, pending.Length); n > 0; n--)
            if (pending.EndsWith(stop[..n], StringComparison.Ordinal)) return n;
        return 0;
    }
}
