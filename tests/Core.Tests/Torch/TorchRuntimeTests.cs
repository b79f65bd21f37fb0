using AdapterService.Core.Torch;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Torch;

public class TorchRuntimeTests
{
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
    public void PatchedLibraryNoLongerNeedsMissingVersionsStrictly()
    {
        TorchRuntime.EnsureReady();
        string lib = Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native", "libLibTorchSharp.so");
        const string host = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";
        Assert.True(File.Exists(lib));
        // A second application finds nothing left to weaken: the fix is idempotent.
        Assert.Empty(ElfVersionFix.Apply(lib, host));
    }
}
