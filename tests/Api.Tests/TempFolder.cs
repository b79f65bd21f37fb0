namespace AdapterService.Api.Tests;

/// <summary>A fresh folder under the system's temp folder, deleted (with everything in it) when disposed.</summary>
public sealed class TempFolder(string prefix) : IDisposable
{
    readonly DirectoryInfo folder = Directory.CreateTempSubdirectory(prefix);

    public string FullName => folder.FullName;

    public void Dispose()
    {
        try { folder.Delete(recursive: true); }
        catch (IOException) { }   // a process that was just killed may still hold a file for a moment
    }
}
