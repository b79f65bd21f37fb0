using System.Runtime.InteropServices;
using TorchSharp;

namespace AdapterService.Core.Torch;

/// <summary>
/// Call <see cref="EnsureReady"/> before the first TorchSharp call of a process: on hosts whose libstdc++ is older
/// than GCC 13 (Debian 12) it first fixes the version needs of the libLibTorchSharp.so this process will load.
/// Where libstdc++ is new enough it changes nothing. On Linux it also asks libtorch for transparent huge pages.
/// </summary>
/// <remarks>
/// Huge pages: a training step frees and allocates gigabytes of activations, and glibc returns large blocks to the
/// kernel when they are freed, so the next step maps them afresh and takes a page fault per 4 KB: 190,000-410,000
/// faults a step on section 6's benchmark model (docs/BENCHMARKS.md), more in a process's first steps. What a fault
/// costs depends on the machine (more in a virtual machine), a likely reason why the benchmark's MFU differed between
/// machines of one kind. libtorch's <c>THP_MEM_ALLOC_ENABLE</c> aligns its allocations of 2 MB and more to 2 MB and
/// marks them for transparent huge pages (<c>madvise</c>, honoured in the kernel's THP modes <c>madvise</c> and
/// <c>always</c>). glibc's <c>GLIBC_TUNABLES=glibc.malloc.hugetlb=1</c> does it for the whole heap and does better (a
/// few thousand faults a step from the first run, against 90,000-140,000 in libtorch's first runs), but glibc reads it
/// only when a process starts, so the launch settings and Docker images set it; a process started without it gets
/// libtorch's, set here before the first tensor (unless the process was started with it; 0 turns it off).
/// </remarks>
public static class TorchRuntime
{
    const string HugePages = "THP_MEM_ALLOC_ENABLE";
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
            // .NET keeps its own copy of the environment: libtorch reads the C library's, so set it there. Not on top of
            // glibc's tunable: the two together faulted more than the tunable alone (section 6).
            if (OperatingSystem.IsLinux() && Environment.GetEnvironmentVariable(HugePages) is null
                && Environment.GetEnvironmentVariable("GLIBC_TUNABLES")?.Contains("glibc.malloc.hugetlb=1") != true)
                SetEnv(HugePages, "1", 0);
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

    [DllImport("libc", EntryPoint = "setenv")]
    static extern int SetEnv(string name, string value, int overwrite);
}
