using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using TorchSharp;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Adapters;

public sealed class LoraTests
{
    const long In = 6, Out = 5;

    public LoraTests() => TorchRuntime.EnsureReady();

    /// <summary>A LoRA layer with given A [r, in] and B [out, r], and a frozen linear layer W [out, in] it adapts.</summary>
    static (AdaptableLinear Linear, LoraLayer Lora, Tensor W, Tensor A, Tensor B) Layer(LoraConfig config)
    {
        using var g = new Generator(21);
        var (w, a, b) = (randn([Out, In], generator: g), randn([config.Rank, In], generator: g), randn([Out, config.Rank], generator: g));
        var linear = new AdaptableLinear(In, Out);
        var lora = new LoraLayer(In, Out, config);
        using (no_grad())
        {
            linear.weight.copy_(w);
            lora.lora_A.weight!.copy_(a);
            lora.lora_B.weight!.copy_(b);
        }
        linear.Adapter = lora;
        return (linear, lora, w, a, b);
    }

    /// <summary>W x + s · B (A x), written out per element.</summary>
    static Tensor Naive(Tensor x, Tensor w, Tensor a, Tensor b, double s)
    {
        float[] xs = x.data<float>().ToArray(), ws = w.data<float>().ToArray(), As = a.data<float>().ToArray(), bs = b.data<float>().ToArray();
        long rows = xs.Length / In, r = a.shape[0];
        var h = new double[rows * Out];
        for (long n = 0; n < rows; n++)
        {
            var ax = new double[r];
            for (long k = 0; k < r; k++)
                for (long i = 0; i < In; i++) ax[k] += (double)As[k * In + i] * xs[n * In + i];
            for (long o = 0; o < Out; o++)
            {
                double wx = 0, bax = 0;
                for (long i = 0; i < In; i++) wx += (double)ws[o * In + i] * xs[n * In + i];
                for (long k = 0; k < r; k++) bax += bs[o * r + k] * ax[k];
                h[n * Out + o] = wx + s * bax;
            }
        }
        return tensor(h, [.. x.shape[..^1], Out]).to_type(ScalarType.Float32);
    }

    [Fact]
    public void OutputIsWxPlusAlphaOverRankTimesBAx()
    {
        using var scope = NewDisposeScope();
        var config = new LoraConfig { Rank = 3, Alpha = 6 };
        var (linear, lora, w, a, b) = Layer(config);
        lora.train(false);
        var x = randn([2, 4, In], generator: new Generator(22));

        Assert.Equal(2.0, lora.Weights().Scaling);
        AssertClose(Naive(x, w, a, b, 2.0), linear.forward(x), 1e-5);
    }

    [Fact]
    public void RsLoraScalesByAlphaOverSquareRootOfRank()
    {
        using var scope = NewDisposeScope();
        var config = new LoraConfig { Rank = 4, Alpha = 8, UseRsLora = true };
        var (linear, lora, w, a, b) = Layer(config);
        lora.train(false);
        var x = randn([3, In], generator: new Generator(23));

        Assert.Equal(4.0, config.Scaling);
        Assert.Equal(2.0, new LoraConfig { Rank = 4, Alpha = 8 }.Scaling);
        AssertClose(Naive(x, w, a, b, 4.0), linear.forward(x), 1e-5);
    }

    [Fact]
    public void DropoutActsOnlyInTrainingMode()
    {
        using var scope = NewDisposeScope();
        var config = new LoraConfig { Rank = 3, Alpha = 3, Dropout = 0.5 };
        var (linear, lora, w, a, b) = Layer(config);
        var x = randn([64, In], generator: new Generator(24));
        var exact = Naive(x, w, a, b, 1.0);

        lora.train(true);
        var first = linear.forward(x);
        var second = linear.forward(x);
        Assert.False(allclose(first, exact, 1e-3, 1e-3), "training mode should drop input features");
        Assert.False(allclose(first, second), "each training forward should draw a new dropout mask");

        lora.train(false);
        AssertClose(exact, linear.forward(x), 1e-5);
        AssertClose(exact, linear.forward(x), 1e-5);
    }

    [Fact]
    public void AtInitialisationBIsZeroAndTheAdaptedModelEqualsTheBase()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var _ = no_grad();
        var ids = Ids(2, 7, seed: 25);
        var baseLogits = model.forward(ids);

        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["all-linear"] });
        adapter.Train(false);
        adapter.Attach(model);

        Assert.Equal(7 * Config.NumHiddenLayers, adapter.LoraLayers.Count);
        Assert.All(adapter.LoraLayers.Values, l =>
        {
            Assert.Equal(0, l.lora_B.weight!.count_nonzero().item<long>());
            Assert.NotEqual(0, l.lora_A.weight!.abs().sum().item<float>());
        });
        Assert.Equal(Bytes(baseLogits), Bytes(model.forward(ids)));

        Randomize(adapter, seed: 26);   // and the slots are really in use
        Assert.False(allclose(baseLogits, model.forward(ids), 1e-3, 1e-3));
    }
}
