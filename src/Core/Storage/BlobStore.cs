using System.Runtime.InteropServices;
using System.Security.Cryptography;

namespace AdapterService.Core.Storage;

/// <summary>
/// Where files, base models and adapters live. Every write lands complete or not at all, so no process (of many,
/// in scale-out) ever reads half a blob. <see cref="FolderBlobStore"/> keeps them in a folder (a shared volume when
/// scaled out); an object store would implement the same contract with a local cache behind <see cref="Resolve"/>.
/// </summary>
public interface IBlobStore
{
    /// <summary>The local path of a blob path; refuses anything that would leave the store.</summary>
    string Resolve(string blobPath);
    Task<long> WriteAsync(string blobPath, Stream content, CancellationToken cancel);
    Stream OpenRead(string blobPath);
    /// <summary>A fresh folder for writing something that <see cref="CommitFolder"/> publishes later.</summary>
    string NewTempFolder();
    /// <summary>
    /// Publishes a finished folder as <paramref name="blobPath"/> in one step; with <paramref name="replace"/>, whatever
    /// is there already (a folder left by an interrupted run) is deleted first.
    /// </summary>
    void CommitFolder(string tempFolder, string blobPath, bool replace = false);
    /// <summary>
    /// Lets <paramref name="write"/> fill a fresh temporary folder and publishes it as <paramref name="blobPath"/>
    /// (<see cref="CommitFolder"/>); when anything fails the temporary folder goes, so nothing half-written stays, and a
    /// full disk (whoever wrote) is a <see cref="StorageFullException"/>.
    /// </summary>
    void WriteFolder(string blobPath, Action<string> write, bool replace = false);
    void Delete(string blobPath);
    bool Exists(string blobPath);
    /// <summary>The names of the entries directly under the folder <paramref name="blobPath"/> (none when it does not exist).</summary>
    IReadOnlyList<string> List(string blobPath);
    long SizeOf(string blobPath);
    /// <summary>SHA-256 (hex) of a file, or of a folder's files by name and content.</summary>
    string ContentHash(string blobPath);
}

/// <summary>Blob paths are made from ids by the service, never from names users send.</summary>
public static class BlobPaths
{
    public static string FilePath(string fileId) => $"files/{fileId}";
    public static string ModelPath(string modelId) => $"models/{modelId}";
    public static string AdapterPath(string adapterId) => $"adapters/{adapterId}";
    public static string CheckpointPath(string jobId, int step, int? sweepMember = null) =>
        $"jobs/{jobId}/checkpoints/step-{step}" + (sweepMember is { } m ? $"-m{m + 1}" : "");
    /// <summary>Where a job's trainer state lives between runs (one folder per saved step).</summary>
    public static string TrainerStatePath(string jobId, int? sweepMember = null) => $"jobs/{jobId}/state" + (sweepMember is { } m ? $"-m{m + 1}" : "");
}

/// <summary>
/// Files, base models and adapters in a folder (a shared volume when scaled out). Every write lands under a temporary
/// name first and is renamed into place.
/// </summary>
public sealed class FolderBlobStore(string root) : IBlobStore
{
    public string Root { get; } = Path.GetFullPath(root);

    /// <summary>The absolute path of a blob path; refuses anything that would leave the root.</summary>
    public string Resolve(string blobPath)
    {
        var full = Path.GetFullPath(Path.Combine(Root, blobPath));
        if (!full.StartsWith(Root + Path.DirectorySeparatorChar, StringComparison.Ordinal))
            throw new ArgumentException($"blob path {blobPath} leaves the blob root");
        return full;
    }

    public Task<long> WriteAsync(string blobPath, Stream content, CancellationToken cancel) => StorageFullException.GuardAsync(async () =>
    {
        var path = Resolve(blobPath);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        var temp = $"{path}.tmp-{Guid.NewGuid():N}";
        try
        {
            long length;
            await using (var file = File.Create(temp))
            {
                await content.CopyToAsync(file, cancel);
                file.Flush(flushToDisk: true);   // the bytes on disk before the name points at them
                length = file.Length;
            }
            File.Move(temp, path, overwrite: true);
            Durable.Sync(Path.GetDirectoryName(path)!);   // and the rename itself, so a power cut keeps the blob
            return length;
        }
        finally
        {
            File.Delete(temp);
        }
    });

    public Stream OpenRead(string blobPath) => File.OpenRead(Resolve(blobPath));

    /// <summary>Moves a finished folder (written elsewhere under the root) into place as <paramref name="blobPath"/>.</summary>
    public void CommitFolder(string tempFolder, string blobPath, bool replace = false) => StorageFullException.Guard(() =>
    {
        var path = Resolve(blobPath);
        if (replace && Exists(blobPath)) Delete(blobPath);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        Durable.SyncTree(tempFolder);   // whoever wrote the files (safetensors, trainer states), they are on disk first
        Directory.Move(tempFolder, path);
        Durable.Sync(Path.GetDirectoryName(path)!);
    });

    public void WriteFolder(string blobPath, Action<string> write, bool replace = false)
    {
        var temp = NewTempFolder();
        try
        {
            StorageFullException.Guard(() => write(temp));
            CommitFolder(temp, blobPath, replace);
        }
        finally
        {
            if (Directory.Exists(temp)) Directory.Delete(temp, recursive: true);
        }
    }

    /// <summary>A fresh folder under the root for writing something that <see cref="CommitFolder"/> publishes later.</summary>
    public string NewTempFolder() => StorageFullException.Guard(() => Directory.CreateDirectory(Resolve($"tmp/{Guid.NewGuid():N}")).FullName);

    public void Delete(string blobPath)
    {
        var path = Resolve(blobPath);
        if (Directory.Exists(path)) Directory.Delete(path, recursive: true);
        else File.Delete(path);
    }

    public bool Exists(string blobPath)
    {
        var path = Resolve(blobPath);
        return Directory.Exists(path) || File.Exists(path);
    }

    public IReadOnlyList<string> List(string blobPath)
    {
        var path = Resolve(blobPath);
        return Directory.Exists(path) ? Directory.EnumerateFileSystemEntries(path).Select(e => Path.GetFileName(e)).ToList() : [];
    }

    public long SizeOf(string blobPath)
    {
        var path = Resolve(blobPath);
        return Directory.Exists(path)
            ? new DirectoryInfo(path).EnumerateFiles("*", SearchOption.AllDirectories).Sum(f => f.Length)
            : new FileInfo(path).Length;
    }

    public string ContentHash(string blobPath)
    {
        var path = Resolve(blobPath);
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var files = Directory.Exists(path) ? Directory.GetFiles(path).Order(StringComparer.Ordinal).ToArray() : [path];
        foreach (var file in files)
        {
            if (files.Length > 1 || Directory.Exists(path)) sha.AppendData(System.Text.Encoding.UTF8.GetBytes(Path.GetFileName(file) + "\n"));
            sha.AppendData(File.ReadAllBytes(file));
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }
}

/// <summary>
/// fsync(2) for what .NET cannot flush itself: files written by other code, and directories, whose entries (a rename)
/// reach the disk only when the directory is synced. On Windows, where directories cannot be opened so, files only.
/// An error keeps its errno as HResult (28 is ENOSPC: <see cref="StorageFullException.IsCause"/>).
/// </summary>
public static class Durable
{
    [DllImport("libc", SetLastError = true)] static extern int open([MarshalAs(UnmanagedType.LPUTF8Str)] string path, int flags);
    [DllImport("libc", SetLastError = true)] static extern int fsync(int fd);
    [DllImport("libc")] static extern int close(int fd);

    public static void Sync(string path)
    {
        if (OperatingSystem.IsWindows())
        {
            if (File.Exists(path)) using (var file = new FileStream(path, FileMode.Open, FileAccess.ReadWrite)) file.Flush(flushToDisk: true);
            return;
        }
        int fd = open(path, 0);   // O_RDONLY: enough to fsync a file or a directory
        if (fd < 0) throw new IOException($"{Path.GetFileName(path)} could not be opened to sync it (errno {Marshal.GetLastPInvokeError()})", Marshal.GetLastPInvokeError());
        try
        {
            if (fsync(fd) != 0) throw new IOException($"{Path.GetFileName(path)} could not be synced to disk (errno {Marshal.GetLastPInvokeError()})", Marshal.GetLastPInvokeError());
        }
        finally
        {
            close(fd);
        }
    }

    /// <summary>Every file and folder under <paramref name="folder"/>, then the folder itself.</summary>
    public static void SyncTree(string folder)
    {
        foreach (var file in Directory.EnumerateFiles(folder, "*", SearchOption.AllDirectories)) Sync(file);
        foreach (var sub in Directory.EnumerateDirectories(folder, "*", SearchOption.AllDirectories)) Sync(sub);
        Sync(folder);
    }
}
