using AdapterService.Core.Torch;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Torch;

public class TorchRuntimeTests
{
    const string HostLibstdcxx = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";

    [Fact]
    public void ForwardAndBackwardRunOnThisHost()
    {
        TorchRuntime.EnsureReady();
        using var scope = NewDisposeScope();
        var w = tensor(new float[] { 1, 2, 3, 4 }, [2, 2]).requires_grad_();
        var x = tensor(new float[] { 1, -1 }, [2, 1]);
        var y = matmul(w, x).pow(2).sum();   // (1-2)^2 + (3-4)^2 = 2
        y.backward();
        Assert.Equal(2f, y.item<float>(), 5);
        // d/dw sum((w x)^2) = 2 (w x) x^T = [[-2, 2], [-2, 2]]
        Assert.Equal(new float[] { -2, 2, -2, 2 }, w.grad!.data<float>().ToArray());
    }

    [Fact]
    public void TheFixWeakensExactlyTheVersionsTheHostLacksWithATwoByteEdit()
    {
        string pristine = Path.Combine(Environment.GetEnvironmentVariable("NUGET_PACKAGES")
            ?? Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".nuget", "packages"),
            "torchsharp", "0.107.0", "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.True(File.Exists(pristine), $"the restored TorchSharp package should hold {pristine}");
        string copy = Path.Combine(Path.GetTempPath(), $"libLibTorchSharp-{Guid.NewGuid():N}.so");
        File.Copy(pristine, copy);
        try
        {
            bool hostHasIt = ElfVersionFix.DefinedVersions(File.ReadAllBytes(HostLibstdcxx)).Contains("GLIBCXX_3.4.32");
            var weakened = ElfVersionFix.Apply(copy, HostLibstdcxx);
            Assert.Equal(hostHasIt ? [] : ["GLIBCXX_3.4.32"], weakened);

            byte[] before = File.ReadAllBytes(pristine), after = File.ReadAllBytes(copy);
            Assert.Equal(before.Length, after.Length);
            Assert.Equal(hostHasIt ? 0 : 1, Enumerable.Range(0, before.Length).Count(i => before[i] != after[i]));   // one flag byte
            Assert.Empty(ElfVersionFix.Apply(copy, HostLibstdcxx));   // idempotent
        }
        finally
        {
            File.Delete(copy);
        }
    }

    [Fact]
    public void TheLibraryThisProcessLoadedIsFixed()
    {
        TorchRuntime.EnsureReady();
        string lib = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        Assert.Empty(ElfVersionFix.Apply(lib, HostLibstdcxx));
        // TorchSharp copies its natives to cpu/ only after a failed load; a clean start leaves none.
        Assert.False(Directory.Exists(Path.Combine(AppContext.BaseDirectory, "cpu")));
    }

    [Fact]
    public void NonElfInputIsRefusedClearly()
    {
        string junk = Path.GetTempFileName();
        File.WriteAllText(junk, "not an ELF file");
        try { Assert.Throws<InvalidDataException>(() => ElfVersionFix.Apply(junk, HostLibstdcxx)); }
        finally { File.Delete(junk); }
    }
}
