using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using TorchSharp;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

/// <summary>The adapter slot of LayerNorm and RMSNorm: what an adapter sees, and that the model's norms are all listed.</summary>
public sealed class AdaptableNormTests
{
    public AdaptableNormTests() => TorchRuntime.EnsureReady();

    /// <summary>A scale/shift change of the affine part, as RLRR makes: y + δscale ⊙ x̂ + δshift.</summary>
    sealed class ScaleShift(Tensor scale, Tensor shift) : ILinearAdapter
    {
        public Tensor Forward(Tensor x, Tensor y) => y + scale * x + shift;
    }

    [Fact]
    public void LayerNormIsTheNormalisedInputScaledAndShiftedAndItsAdapterSeesTheNormalisedInput()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(21);
        using var norm = new AdaptableLayerNorm(6, 1e-5);
        using (no_grad())
        {
            norm.weight.uniform_(0.5, 1.5, g);
            norm.bias.normal_(0, 1, g);
        }
        var x = randn([2, 3, 6], generator: g) * 3 + 1;
        var (dScale, dShift) = (randn([6], generator: g), randn([6], generator: g));

        // Written out: (x - mean) / sqrt(biased variance + eps), then the affine part.
        float[] xs = x.data<float>().ToArray(), w = norm.weight.data<float>().ToArray(), b = norm.bias.data<float>().ToArray();
        float[] ds = dScale.data<float>().ToArray(), dh = dShift.data<float>().ToArray();
        double[] plain = new double[xs.Length], adapted = new double[xs.Length];
        for (int row = 0; row < 6; row++)
        {
            double mean = Enumerable.Range(0, 6).Average(i => (double)xs[row * 6 + i]);
            double variance = Enumerable.Range(0, 6).Average(i => Math.Pow(xs[row * 6 + i] - mean, 2));
            for (int i = 0; i < 6; i++)
            {
                double normed = (xs[row * 6 + i] - mean) / Math.Sqrt(variance + 1e-5);
                plain[row * 6 + i] = normed * w[i] + b[i];
                adapted[row * 6 + i] = normed * (w[i] + ds[i]) + b[i] + dh[i];
            }
        }
        AssertClose(tensor(plain, [2, 3, 6]), norm.forward(x), 1e-5);
        norm.Adapter = new ScaleShift(dScale, dShift);
        AssertClose(tensor(adapted, [2, 3, 6]), norm.forward(x), 1e-5);
    }

    [Fact]
    public void RmsNormsAdapterSeesTheNormalisedInput()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(22);
        using var norm = new RmsNorm(8, 1e-6);
        using (no_grad()) norm.weight.uniform_(0.5, 1.5, g);
        var x = randn([3, 8], generator: g) * 2;
        var dScale = randn([8], generator: g);
        var expected = norm.forward(x) / norm.weight * (norm.weight + dScale);   // x̂ · (weight + δ)

        norm.Adapter = new ScaleShift(dScale, zeros(8));
        AssertClose(expected, norm.forward(x), 1e-5);
        Assert.Null(((IAdaptableNorm)norm).Bias);
    }

    [Fact]
    public void LlamasNormsAreListedByPath()
    {
        using var model = Create();
        var expected = Enumerable.Range(0, Config.NumHiddenLayers)
            .SelectMany(i => new[] { $"model.layers.{i}.input_layernorm", $"model.layers.{i}.post_attention_layernorm" })
            .Append("model.norm");
        Assert.Equal(expected.Order(), model.NormLayers().Select(n => n.Path).Order());
        Assert.All(model.NormLayers(), n => Assert.Equal(Config.HiddenSize, n.Layer.Size));
    }
}
