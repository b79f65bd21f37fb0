using System.Security.Cryptography;

namespace AdapterService.Core.Storage;

public static class Ids
{
    const string Alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

    /// <summary>24 random alphanumerics, as in OpenAI's ids (the caller adds the prefix: <c>file-</c>, <c>ftjob-</c>, ...).</summary>
    public static string New() => RandomNumberGenerator.GetString(Alphabet, 24);

    static readonly HashSet<string> Reserved = new(StringComparer.OrdinalIgnoreCase)
    {
        "CON", "PRN", "AUX", "NUL", "COM1", "COM2", "COM3", "COM4", "COM5", "COM6", "COM7", "COM8", "COM9",
        "LPT1", "LPT2", "LPT3", "LPT4", "LPT5", "LPT6", "LPT7", "LPT8", "LPT9",
    };

    /// <summary>
    /// Whether a name a user chose may become a folder name (a base model's id is its blob folder): not <c>.</c> or
    /// <c>..</c> (which a pattern of letters, digits and dots lets through), nothing starting with a dot (hidden, or a
    /// way up), and none of the device names Windows reserves, with or without an extension.
    /// </summary>
    public static bool IsUsableAsFolderName(string name) =>
        name.Length > 0 && !name.StartsWith('.') && !name.EndsWith('.') && !Reserved.Contains(name.Split('.')[0]);
}
