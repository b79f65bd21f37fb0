using System.IO.Compression;

namespace AdapterService.Api.Infrastructure;

/// <summary>Zips a folder for download, and unpacks uploaded zips safely: only wanted files, found by name, written under that name, with a size cap.</summary>
public static class SafeZip
{
    /// <summary>
    /// Writes the entries whose file name <paramref name="wanted"/> accepts into <paramref name="folder"/> and returns
    /// their names. Entries count at the zip's root or in one folder (the layout of a zipped folder); each is written
    /// under its bare file name, so no entry path can escape <paramref name="folder"/>. A name may appear once. The
    /// bytes actually inflated are counted, so a zip bomb stops at <paramref name="maxBytes"/>.
    /// </summary>
    /// <exception cref="InvalidDataException">Not a zip, a file twice, a <paramref name="required"/> file missing, or too large.</exception>
    public static IReadOnlyList<string> Extract(Stream zip, string folder, long maxBytes, Func<string, bool> wanted, IReadOnlyList<string> required)
    {
        ZipArchive archive;
        try { archive = new ZipArchive(zip, ZipArchiveMode.Read); }
        catch (InvalidDataException) { throw new InvalidDataException("the upload is not a zip file"); }
        using (archive)
        {
            var entries = archive.Entries.Where(e => e.Name.Length > 0 && wanted(e.Name) && e.FullName.Count(c => c == '/') <= 1).ToList();
            if (entries.GroupBy(e => e.Name).FirstOrDefault(g => g.Count() > 1) is { } twice)
                throw new InvalidDataException($"the zip has more than one {twice.Key}");
            if (required.FirstOrDefault(name => entries.All(e => e.Name != name)) is { } missing)
                throw new InvalidDataException($"the zip has no {missing}");
            long total = 0;
            var buffer = new byte[81920];
            foreach (var entry in entries)
            {
                using var source = entry.Open();
                using var target = File.Create(Path.Combine(folder, entry.Name));
                for (int read; (read = source.Read(buffer)) > 0;)
                {
                    if ((total += read) > maxBytes) throw new InvalidDataException($"the unpacked files are larger than {maxBytes} bytes");
                    target.Write(buffer, 0, read);
                }
            }
            return entries.Select(e => e.Name).ToList();
        }
    }

    /// <summary>
    /// Writes the files of <paramref name="folder"/> (not its subfolders) as a zip, each at the zip's root (what Extract
    /// reads back), into <paramref name="output"/> as it goes: nothing is held but a file's current buffer, and an
    /// unseekable output (a response body) gets each entry's sizes after its data.
    /// </summary>
    public static async Task WriteAsync(string folder, Stream output, CancellationToken cancel)
    {
        await using var archive = await ZipArchive.CreateAsync(output, ZipArchiveMode.Create, leaveOpen: true, entryNameEncoding: null, cancel);
        foreach (var file in Directory.GetFiles(folder).Order(StringComparer.Ordinal))
            await archive.CreateEntryFromFileAsync(file, Path.GetFileName(file), CompressionLevel.Fastest, cancel);
    }
}
