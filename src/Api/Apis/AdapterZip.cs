using System.IO.Compression;

namespace AdapterService.Api.Apis;

/// <summary>Unpacks an uploaded adapter zip safely: only the two PEFT files, by their names, with a size cap.</summary>
public static class AdapterZip
{
    static readonly string[] Wanted = ["adapter_config.json", "adapter_model.safetensors"];

    /// <summary>
    /// Writes adapter_config.json and adapter_model.safetensors into <paramref name="folder"/>. Entries are found by
    /// file name (at the root or in one folder) and written under fixed names, so no entry path can escape the folder;
    /// the bytes actually inflated are counted, so a zip bomb stops at <paramref name="maxBytes"/>.
    /// </summary>
    public static void Extract(Stream zip, string folder, long maxBytes)
    {
        ZipArchive archive;
        try { archive = new ZipArchive(zip, ZipArchiveMode.Read); }
        catch (InvalidDataException) { throw new InvalidDataException("the upload is not a zip file"); }
        using (archive)
        {
            long total = 0;
            foreach (var name in Wanted)
            {
                var entries = archive.Entries.Where(e => e.Name == name && e.FullName.Count(c => c == '/') <= 1).ToList();
                if (entries.Count != 1)
                    throw new InvalidDataException(entries.Count == 0 ? $"the zip has no {name}" : $"the zip has more than one {name}");
                using var source = entries[0].Open();
                using var target = File.Create(Path.Combine(folder, name));
                var buffer = new byte[81920];
                for (int read; (read = source.Read(buffer)) > 0;)
                {
                    if ((total += read) > maxBytes) throw new InvalidDataException($"the unpacked adapter is larger than {maxBytes} bytes");
                    target.Write(buffer, 0, read);
                }
            }
        }
    }
}
