using System.Text;

namespace AdapterService.Api.Tests;

/// <summary>
/// Seeded mutations of valid inputs for fuzz tests: bit flips, random bytes, deletions, duplications, truncations and
/// splices of tokens that tend to break parsers (nulls, huge numbers, brackets, quotes, invalid UTF-8). The same seed
/// gives the same inputs, so a failure names the seed and index that reproduce it.
/// </summary>
public sealed class Mutator(int seed)
{
    static readonly byte[][] Tokens = new[]
    {
        "null", "true", "false", "0", "-1", "1e309", "-1e309", "99999999999999999999", "2147483648", "-9223372036854775809", "1.5",
        "\"\"", "\"x\"", "[]", "{}", "[", "]", "{", "}", ",", ":", "\"", "\\", "\\u0000", "\\ud800", "\n", "\r\n", "NaN",
        "{\"a\":", "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[", new string('a', 300),
    }.Select(Encoding.UTF8.GetBytes).Concat([[0xFF], [0xC0, 0x80], [0xED, 0xA0, 0x80], [0], [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F]]).ToArray();

    public Random Random { get; } = new(seed);

    public byte[] Mutate(byte[] input)
    {
        var data = new List<byte>(input);
        for (int n = 1 + Random.Next(4); n > 0; n--)
        {
            int at = Random.Next(data.Count + 1), length = Math.Min(data.Count - at, 1 + Random.Next(16));
            switch (Random.Next(8))
            {
                case 0 when at < data.Count: data[at] ^= (byte)(1 << Random.Next(8)); break;
                case 1 when at < data.Count: data[at] = (byte)Random.Next(256); break;
                case 2: data.RemoveRange(at, length); break;
                case 3: data.InsertRange(at, Enumerable.Range(0, 1 + Random.Next(8)).Select(_ => (byte)Random.Next(256))); break;
                case 4: data.InsertRange(at, Tokens[Random.Next(Tokens.Length)]); break;
                case 5:
                    data.RemoveRange(at, length);
                    data.InsertRange(at, Tokens[Random.Next(Tokens.Length)]);
                    break;
                case 6: data.InsertRange(at, data.GetRange(at, length)); break;
                default: data.Reverse(at, length); break;
            }
        }
        if (Random.Next(12) == 0) return data.Take(Random.Next(data.Count + 1)).ToArray();   // truncated
        return data.ToArray();
    }

    public string MutateText(string input) => Encoding.UTF8.GetString(Mutate(Encoding.UTF8.GetBytes(input)));
}
