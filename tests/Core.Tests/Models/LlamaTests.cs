using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using TorchSharp;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

/// <summary>The model's numerics against reference code written here from the Llama equations, in float64.</summary>
public sealed class LlamaTests
{
    const double Tolerance = 1e-5;

    public LlamaTests() => TorchRuntime.EnsureReady();

    [Fact]
    public void RmsNormIsXOverRootMeanSquareTimesWeight()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(3);
        using var norm = new RmsNorm(8, 1e-5);
        using (no_grad()) norm.weight.uniform_(0.5, 1.5, g);
        var x = randn([3, 8], generator: g) * 4;

        float[] xs = x.data<float>().ToArray(), w = norm.weight.data<float>().ToArray();
        var expected = new double[xs.Length];
        for (int row = 0; row < 3; row++)
        {
            double meanSquare = 0;
            for (int i = 0; i < 8; i++) meanSquare += (double)xs[row * 8 + i] * xs[row * 8 + i] / 8;
            for (int i = 0; i < 8; i++) expected[row * 8 + i] = xs[row * 8 + i] / Math.Sqrt(meanSquare + 1e-5) * w[i];
        }
        AssertClose(tensor(expected, [3, 8]), norm.forward(x), Tolerance);
    }

    [Fact]
    public void RotaryRotatesHalvesByPositionTimesThetaPower()
    {
        using var scope = NewDisposeScope();
        const int hd = 8, half = hd / 2, heads = 2, length = 5, start = 3;
        const double theta = 500;
        var x = randn([1, heads, length, hd], generator: new Generator(4));

        var (cos, sin) = new RotaryEmbedding(new RopeShape(hd, theta, 2048)).Angles(arange(start, start + length, ScalarType.Int64).unsqueeze(0));
        var got = RotaryEmbedding.Apply(x, cos, sin);

        // HF "rotate half": pair element i with i + hd/2, rotate by angle (position · theta^(-2i/hd)).
        float[] xs = x.data<float>().ToArray();
        var expected = new double[xs.Length];
        for (int h = 0; h < heads; h++)
            for (int p = 0; p < length; p++)
                for (int i = 0; i < half; i++)
                {
                    int at = (h * length + p) * hd;
                    double angle = (start + p) * Math.Pow(theta, -2.0 * i / hd);
                    double x1 = xs[at + i], x2 = xs[at + i + half];
                    expected[at + i] = x1 * Math.Cos(angle) - x2 * Math.Sin(angle);
                    expected[at + i + half] = x2 * Math.Cos(angle) + x1 * Math.Sin(angle);
                }
        AssertClose(tensor(expected, [1, heads, length, hd]), got, Tolerance);
    }

    [Fact]
    public void Llama3RopeScalingSlowsLongWavelengthsAndBlendsTheMiddleBand()
    {
        using var scope = NewDisposeScope();
        const int hd = 16;
        const double theta = 10000, factor = 8, low = 1, high = 4, context = 64;
        var scaling = new RopeScaling { RopeType = "llama3", Factor = factor, LowFreqFactor = low, HighFreqFactor = high, OriginalMaxPositionEmbeddings = (int)context };
        var (_, sin) = new RotaryEmbedding(new RopeShape(hd, theta, 2048), scaling).Angles(tensor(new long[] { 1 }).unsqueeze(0));   // position 1: the angle is the frequency

        // Meta's reference (apply_scaling in llama3's model.py), one frequency at a time.
        var expected = new double[hd];
        for (int i = 0; i < hd / 2; i++)
        {
            double freq = 1 / Math.Pow(theta, 2.0 * i / hd), wavelength = 2 * Math.PI / freq;
            double scaled = wavelength < context / high ? freq
                : wavelength > context / low ? freq / factor
                : (1 - (context / wavelength - low) / (high - low)) * freq / factor + (context / wavelength - low) / (high - low) * freq;
            expected[i] = expected[i + hd / 2] = Math.Sin(scaled);
        }
        AssertClose(tensor(expected), sin.reshape(hd), 1e-6);
        Assert.True(expected[hd / 2 - 1] < Math.Sin(1 / Math.Pow(theta, (hd - 2.0) / hd)) * 0.2);   // the slowest frequency was divided by factor
    }

    [Fact]
    public void AttentionLayerWithGroupedQueryHeadsAndCausalMaskMatchesReference()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var _ = no_grad();
        var attention = (LlamaAttention)model.model.layers[0].self_attn;
        const long length = 6;
        var x = randn([2, length, Config.HiddenSize], generator: new Generator(5));
        var (cos, sin) = Angles(0, length);
        var mask = ones(length, length, ScalarType.Bool).tril();

        var got = attention.Forward(x, cos, sin, mask, null);

        AssertClose(Reference.Attention(F64(x), attention, start: 0), got, Tolerance);
    }

    [Fact]
    public void SwiGluMlpIsDownOfSiluGateTimesUp()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var _ = no_grad();
        var mlp = (LlamaMlp)model.model.layers[1].mlp;
        var x = randn([2, 3, Config.HiddenSize], generator: new Generator(6));

        AssertClose(Reference.Mlp(F64(x), mlp), mlp.forward(x), Tolerance);
    }

    [Fact]
    public void WholeModelMatchesReference()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var _ = no_grad();
        var ids = Ids(2, 9, seed: 7);

        AssertClose(Reference.Model(ids, model), model.forward(ids), 1e-4);   // two layers of float32 round-off vs float64
    }

    [Fact]
    public void LinearPathsEqualsThePathsOfTheModelsLinearLayers()
    {
        using var model = Create();
        Assert.Equal(LlamaForCausalLM.LinearPaths(Config).Order(), model.LinearLayers().Select(l => l.Path).Order());
        Assert.Equal(Config.NormShapes().Order(), model.NormLayers().Select(n => (n.Path, n.Layer.Size)).Order());
        Assert.Equal(7 * Config.NumHiddenLayers + 1, model.LinearLayers().Count());
    }

    static Tensor F64(Tensor t) => t.detach().to_type(ScalarType.Float64);

    /// <summary>cos/sin tables [length, head_dim] in the HF layout (the hd/2 angles repeated twice).</summary>
    static (Tensor Cos, Tensor Sin) Angles(long start, long length)
    {
        int hd = Config.HeadDim;
        var angles = new double[length * hd];
        for (long p = 0; p < length; p++)
            for (int i = 0; i < hd; i++)
                angles[p * hd + i] = (start + p) * Math.Pow(Config.RopeTheta, -2.0 * (i % (hd / 2)) / hd);
        var a = tensor(angles, [length, hd]);
        return (a.cos().to_type(ScalarType.Float32), a.sin().to_type(ScalarType.Float32));
    }

    /// <summary>The Llama equations in float64, written without the model's helpers.</summary>
    internal static class Reference
    {
        static Tensor W(AdaptableLinear linear) => F64(linear.weight);

        public static Tensor Norm(Tensor x, RmsNorm norm)
        {
            var meanSquare = (x * x).sum(-1, keepdim: true) / x.shape[^1];
            return x / (meanSquare + Config.RmsNormEps).sqrt() * F64(norm.weight);
        }

        /// <summary>x [b, heads, t, hd] at positions start.. rotated: (x1, x2) -> (x1 cos - x2 sin, x2 cos + x1 sin).</summary>
        public static Tensor Rope(Tensor x, long start)
        {
            long t = x.shape[2], hd = x.shape[3], half = hd / 2;
            var angles = new double[t * half];
            for (long p = 0; p < t; p++)
                for (long i = 0; i < half; i++)
                    angles[p * half + i] = (start + p) / Math.Pow(Config.RopeTheta, 2.0 * i / hd);
            var a = tensor(angles, [t, half]);
            Tensor x1 = x.narrow(-1, 0, half), x2 = x.narrow(-1, half, half);
            return cat([x1 * a.cos() - x2 * a.sin(), x2 * a.cos() + x1 * a.sin()], -1);
        }

        public static Tensor Attention(Tensor x, LlamaAttention attention, long start)
        {
            int heads = Config.NumAttentionHeads, kvHeads = Config.KeyValueHeads, hd = Config.HeadDim;
            long b = x.shape[0], t = x.shape[1];
            var q = Rope(x.matmul(W(attention.q_proj).t()).view(b, t, heads, hd).transpose(1, 2), start);
            var k = Rope(x.matmul(W(attention.k_proj).t()).view(b, t, kvHeads, hd).transpose(1, 2), start);
            var v = x.matmul(W(attention.v_proj).t()).view(b, t, kvHeads, hd).transpose(1, 2);
            var future = ones(t, t, ScalarType.Bool).triu(1);                      // key j > query i
            var outputs = new Tensor[heads];
            for (int h = 0; h < heads; h++)
            {
                int kv = h / (heads / kvHeads);                                   // query heads share kv heads in groups
                var scores = q.select(1, h).matmul(k.select(1, kv).transpose(1, 2)) / Math.Sqrt(hd);   // [b, t, t]
                var weights = scores.masked_fill(future, double.NegativeInfinity).softmax(-1);
                outputs[h] = weights.matmul(v.select(1, kv));                     // [b, t, hd]
            }
            return stack(outputs, 2).reshape(b, t, heads * hd).matmul(W(attention.o_proj).t());
        }

        public static Tensor Mlp(Tensor x, LlamaMlp mlp)
        {
            var gate = x.matmul(W(mlp.gate_proj).t());
            var silu = gate / (1 + (-gate).exp());
            return (silu * x.matmul(W(mlp.up_proj).t())).matmul(W(mlp.down_proj).t());
        }

        public static Tensor Model(Tensor ids, LlamaForCausalLM model)
        {
            long b = ids.shape[0], t = ids.shape[1];
            var h = F64(model.model.embed_tokens.weight!).index_select(0, ids.flatten()).view(b, t, -1);
            foreach (var layer in model.model.layers)
            {
                h = h + Attention(Norm(h, layer.input_layernorm), (LlamaAttention)layer.self_attn, start: 0);
                h = h + Mlp(Norm(h, layer.post_attention_layernorm), (LlamaMlp)layer.mlp);
            }
            return Norm(h, model.model.norm).matmul(W(model.lm_head).t());
        }
    }
}
