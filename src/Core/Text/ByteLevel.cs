namespace AdapterService.Core.Text;

/// <summary>
/// GPT-2's byte-level alphabet: every byte is written as one printable character in a byte-level BPE vocabulary
/// (printable Latin-1 bytes as themselves, the others as the characters from U+0100 on, in byte order).
/// </summary>
public static class ByteLevel
{
    /// <summary>The character that stands for each byte.</summary>
    public static IReadOnlyList<char> Encode { get; } = BuildEncode();

    /// <summary>The byte each alphabet character stands for.</summary>
    public static IReadOnlyDictionary<char, byte> Decode { get; } = Enumerable.Range(0, 256).ToDictionary(b => Encode[b], b => (byte)b);

    static char[] BuildEncode()
    {
        static bool Printable(int b) => b is >= '!' and <= '~' or >= '¡' and <= '¬' or >= '®' and <= 'ÿ';
        var map = new char[256];
        int next = 0;
        for (int b = 0; b < 256; b++) map[b] = Printable(b) ? (char)b : (char)(256 + next++);
        return map;
    }

    /// <summary>The alphabet characters of <paramref name="text"/>'s UTF-8 bytes.</summary>
    public static string FromText(string text) => FromBytes(System.Text.Encoding.UTF8.GetBytes(text));

    public static string FromBytes(ReadOnlySpan<byte> bytes)
    {
        var chars = new char[bytes.Length];
        for (int i = 0; i < bytes.Length; i++) chars[i] = Encode[bytes[i]];
        return new string(chars);
    }
}
