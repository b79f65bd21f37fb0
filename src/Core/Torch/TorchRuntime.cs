using TorchSharp;

namespace AdapterService.Core.Torch;

/// <summary>
/// Call <see cref="EnsureReady"/> before the first TorchSharp call of a process: on hosts whose libstdc++ is older
/// than GCC 13 (Debian 12) it first fixes the version needs of the libLibTorchSharp.so this process will load.
/// Where libstdc++ is new enough it changes nothing.
/// </summary>
public static class TorchRuntime
{
    static readonly Lock Gate = new();
    static bool ready;

    static readonly string[] HostLibstdcxx =
    [
        "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
        "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6",
    ];

    public static void EnsureReady()
    {
        lock (Gate)
        {
            if (ready) return;
            if (OperatingSystem.IsLinux() && HostLibstdcxx.FirstOrDefault(File.Exists) is { } host)
                foreach (var lib in TorchSharpLibraries())
                    ElfVersionFix.Apply(lib, host);
            using (var probe = torch.ones(1)) { }   // loads the natives now, with a clear failure if they cannot load
            ready = true;
        }
    }

    /// <summary>The copies of libLibTorchSharp.so this process may load: beside the app (publish) or under runtimes/.</summary>
    static IEnumerable<string> TorchSharpLibraries()
    {
        string baseDir = AppContext.BaseDirectory;
        string[] candidates =
        [
            Path.Combine(baseDir, "libLibTorchSharp.so"),
            Path.Combine(baseDir, "runtimes", "linux-x64", "native", "libLibTorchSharp.so"),
            Path.Combine(baseDir, "runtimes", "linux-arm64", "native", "libLibTorchSharp.so"),
        ];
        return candidates.Where(File.Exists);
    }
}
