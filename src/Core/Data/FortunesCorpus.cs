
namespace AdapterService.Core.Data;

/// <summary>
/// English text from Debian's <c>fortunes</c> package: one file per topic in <see cref="DefaultFolder"/>, each a list of
/// quotations, jokes and poems separated by lines holding only <c>%</c> (the strfile format; the <c>.dat</c> index
/// files and <c>.u8</c> links beside them are skipped).
/// </summary>
public static class FortunesCorpus
{
    public const string DefaultFolder = "/usr/share/games/fortunes";

    /// <summary>Throws <see cref="DatasetMissingException"/>, saying which package to install, unless <paramref name="folder"/> holds fortune files.</summary>
    public static void EnsureInstalled(string folder)
    {
        if (!Directory.Exists(folder) || !Files(folder).Any())
            throw new DatasetMissingException(
                $"The fortunes corpus is not installed: {folder} holds no fortune files. Install Debian's package with 'apt-get install fortunes'.");
    }

    /// <summary>The fortune files (plain files without an extension), sorted by name.</summary>
    public static IEnumerable<string> Files(string folder) =>
        Directory.EnumerateFiles(folder).Where(f => Path.GetExtension(f).Length == 0 && !new FileInfo(f).Attributes.HasFlag(FileAttributes.ReparsePoint))
            .Order(StringComparer.Ordinal);

    /// <summary>Every entry of every file in <paramref name="folder"/>, trimmed, in file then file order; empty entries dropped.</summary>
    public static List<string> Load(string folder)
    {
        EnsureInstalled(folder);
        return Files(folder).SelectMany(f => Split(File.ReadAllText(f))).ToList();
    }

    /// <summary>The entries of one strfile-format text: the parts between lines that hold only <c>%</c>.</summary>
    public static IEnumerable<string> Split(string text)
    {
        var entry = new System.Text.StringBuilder();
        foreach (var line in text.ReplaceLineEndings("\n").Split('\n'))
        {
            if (line == "%")
            {
                if (entry.ToString().Trim('\n') is { Length: > 0 } done) yield return done;
                entry.Clear();
            }
            else entry.Append(line).Append('\n');
        }
        if (entry.ToString().Trim('\n') is { Length: > 0 } last) yield return last;
    }
}
