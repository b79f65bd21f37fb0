using System.Security.Cryptography;

namespace AdapterService.Core.Storage;

public static class Ids
{
    const string Alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

    /// <summary>24 random alphanumerics, as in OpenAI's ids (the caller adds the prefix: <c>file-</c>, <c>ftjob-</c>, ...).</summary>
    public static string New() => RandomNumberGenerator.GetString(Alphabet, 24);
}
