using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using TorchSharp;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Adapters;

/// <summary>Each method's layer against a naive reference written from its paper's equations with plain loops.</summary>
public sealed class PaperEquationTests
{
    const int In = 6, Out = 5, Tokens = 4, Rows = 2;

    public PaperEquationTests() => TorchRuntime.EnsureReady();

    static double[,] Matrix(Tensor t)
    {
        var data = t.detach().to_type(ScalarType.Float64).contiguous().data<double>().ToArray();
        long rows = t.shape[0], cols = t.shape[1];
        var m = new double[rows, cols];
        for (long i = 0; i < rows; i++) for (long j = 0; j < cols; j++) m[i, j] = data[i * cols + j];
        return m;
    }

    static double[] Vector(Tensor t) => t.detach().to_type(ScalarType.Float64).contiguous().data<double>().ToArray();

    static double[][][] Inputs(Tensor x)   // [rows][tokens][in]
    {
        var v = Vector(x);
        return Enumerable.Range(0, Rows).Select(b => Enumerable.Range(0, Tokens)
            .Select(t => Enumerable.Range(0, In).Select(i => v[(b * Tokens + t) * In + i]).ToArray()).ToArray()).ToArray();
    }

    static Tensor FromNested(double[][][] y) => tensor(y.SelectMany(r => r.SelectMany(t => t)).Select(v => (float)v).ToArray(), [Rows, Tokens, y[0][0].Length]);

    static (AdaptableLinear Layer, Tensor X) Setup(bool bias)
    {
        using var g = new Generator(17);
        var layer = new AdaptableLinear(In, Out, hasBias: bias);
        using (no_grad())
        {
            layer.weight.normal_(0, 0.5, g);
            layer.bias?.normal_(0, 0.5, g);
        }
        return (layer, randn([Rows, Tokens, In], generator: g));
    }

    /// <summary>W x + b per element (the frozen output the method adapts).</summary>
    static double[] Linear(double[,] w, double[]? b, double[] x) =>
        Enumerable.Range(0, Out).Select(o => Enumerable.Range(0, In).Sum(i => w[o, i] * x[i]) + (b?[o] ?? 0)).ToArray();

    /// <summary>Lily, Eq. 3–5 and 7: x' = x P_L, W_R = softmax(x' Rᵀ) averaged causally per sequence, Δ = s · x' Σᵢ W_Rⁱ P_Hⁱ.</summary>
    [Theory]
    [InlineData("sequence", true)]
    [InlineData("sequence", false)]
    [InlineData("batch", true)]
    public void LilyFollowsEquations3To7(string mean, bool causal)
    {
        using var scope = NewDisposeScope();
        var (layer, x) = Setup(bias: true);
        const int d = 3, experts = 4;
        var config = new LilyConfig { Rank = d, NumExperts = experts, Scaling = 0.7, RouterMean = mean, TaskType = causal ? "CAUSAL_LM" : "FEATURE_EXTRACTION" };
        using var g = new Generator(5);
        var group = new LilyGroup(d, experts, Out, monoscale: false, g);
        using var lily = new LilyLayer(In, group, config, g);
        using (no_grad()) group.Experts.normal_(0, 0.5, g);   // zero at init; random here so the test sees them
        lily.train(mean == "batch");                         // the batch mean is a training option
        var actual = lily.Forward(x, layer.forward(x));

        double[,] lp = Matrix(lily.lily_A.weight!), router = Matrix(group.Router!), hp = Matrix(group.Experts), w = Matrix(layer.weight);
        double[] b = Vector(layer.bias!);
        var xs = Inputs(x);
        var h = xs.Select(row => row.Select(t => Enumerable.Range(0, d).Select(k => Enumerable.Range(0, In).Sum(i => lp[k, i] * t[i])).ToArray()).ToArray()).ToArray();
        var p = h.Select(row => row.Select(ht =>
        {
            var logits = Enumerable.Range(0, experts).Select(e => Enumerable.Range(0, d).Sum(k => router[e, k] * ht[k])).ToArray();
            double max = logits.Max(), sum = logits.Sum(l => Math.Exp(l - max));
            return logits.Select(l => Math.Exp(l - max) / sum).ToArray();
        }).ToArray()).ToArray();
        double[] WeightsAt(int row, int token)
        {
            var pooled = mean == "batch" ? p.SelectMany(r => r)
                : causal ? p[row].Take(token + 1) : p[row];
            var list = pooled.ToList();
            return Enumerable.Range(0, experts).Select(e => list.Average(q => q[e])).ToArray();
        }
        var expected = xs.Select((row, r) => row.Select((xt, t) =>
        {
            var wr = WeightsAt(r, t);
            var baseOut = Linear(w, b, xt);
            return Enumerable.Range(0, Out).Select(o => baseOut[o] + config.Scaling *
                Enumerable.Range(0, d).Sum(k => h[r][t][k] * Enumerable.Range(0, experts).Sum(e => wr[e] * hp[e * d + k, o]))).ToArray();
        }).ToArray()).ToArray();
        AssertClose(FromNested(expected), actual, 1e-5);
    }

    /// <summary>Decoding token by token with the per-sequence state gives what the whole sequence gives at once.</summary>
    [Fact]
    public void LilyStateCarriesThePrefixMeanAcrossCalls()
    {
        using var scope = NewDisposeScope();
        var (_, x) = Setup(bias: false);
        using var g = new Generator(6);
        Tensor lp = randn([3, In], generator: g), router = randn([4, 3], generator: g), hp = randn([12, Out], generator: g);
        var whole = Lily.Delta(x, lp.t(), router.t(), hp, 1.0, "sequence", causal: true, null, out _);
        var store = zeros(Rows, 5);
        var state = new RowState(store, arange(Rows, ScalarType.Int64));
        var pieces = Enumerable.Range(0, Tokens).Select(t => Lily.Delta(x.narrow(1, t, 1), lp.t(), router.t(), hp, 1.0, "sequence", causal: true, state, out _));
        AssertClose(whole, cat(pieces.ToArray(), 1), 1e-5);
    }

    /// <summary>A right-padded row (a batched prefill) leaves the same state as the row alone: padding never enters the sums.</summary>
    [Fact]
    public void LilyStateIgnoresPadding()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(7);
        Tensor lpT = randn([In, 3], generator: g), routerT = randn([3, 4], generator: g), hp = randn([12, Out], generator: g);
        var prompts = randn([Rows, Tokens, In], generator: g);
        var next = randn([Rows, 1, In], generator: g);
        long[] lengths = [Tokens, 2];

        var padded = new RowState(zeros(Rows, 5), arange(Rows, ScalarType.Int64), arange(Tokens, ScalarType.Int64).unsqueeze(0).lt(tensor(lengths).unsqueeze(1)));
        Lily.Delta(prompts, lpT, routerT, hp, 1.0, "sequence", causal: true, padded, out _);
        var batched = Lily.Delta(next, lpT, routerT, hp, 1.0, "sequence", causal: true, new RowState(padded.Read(), arange(Rows, ScalarType.Int64)), out _);

        for (int row = 0; row < Rows; row++)
        {
            var alone = new RowState(zeros(1, 5), tensor(new long[] { 0 }));
            Lily.Delta(prompts.narrow(0, row, 1).narrow(1, 0, lengths[row]), lpT, routerT, hp, 1.0, "sequence", causal: true, alone, out _);
            AssertClose(Lily.Delta(next.narrow(0, row, 1), lpT, routerT, hp, 1.0, "sequence", causal: true, alone, out _), batched.narrow(0, row, 1), 1e-5);
        }
    }

    /// <summary>RLRR, Eq. 16: X (W + (S_left S_rightᵀ) ⊙ W) + b + f, per element; merged (Eq. 20) and unmerged agree.</summary>
    [Theory]
    [InlineData(1, true)]
    [InlineData(3, false)]
    public void RlrrFollowsEquation16AndMergesExactly(int rank, bool bias)
    {
        using var scope = NewDisposeScope();
        var (layer, x) = Setup(bias);
        using var g = new Generator(8);
        using var rlrr = new RlrrLayer(layer, rank, g);
        using (no_grad()) foreach (var p in rlrr.parameters()) p.normal_(0, 0.5, g);
        layer.Adapter = rlrr;
        var actual = layer.forward(x);

        double[,] w = Matrix(layer.weight), sLeft = Matrix(rlrr.rlrr_s_left), sRight = Matrix(rlrr.rlrr_s_right);
        double[]? b = bias ? Vector(layer.bias!) : null;
        double[] f = Vector(rlrr.rlrr_f);
        var adapted = new double[Out, In];
        for (int o = 0; o < Out; o++)
            for (int i = 0; i < In; i++)
                adapted[o, i] = w[o, i] + Enumerable.Range(0, rank).Sum(k => sLeft[k, i] * sRight[k, o]) * w[o, i];
        var expected = Inputs(x).Select(row => row.Select(xt => Linear(adapted, b, xt).Select((v, o) => v + f[o]).ToArray()).ToArray()).ToArray();
        AssertClose(FromNested(expected), actual, 1e-5);

        // The serving form never builds ΔW: Σₖ S_right[k] ⊙ W (S_left[k] ⊙ x).
        using (no_grad())
            AssertClose(nn.functional.linear(x, Rlrr.DeltaWeight(layer.weight, rlrr.rlrr_s_left, rlrr.rlrr_s_right)),
                Rlrr.Delta(x, layer, rlrr.rlrr_s_left, rlrr.rlrr_s_right), 1e-5);
    }

    /// <summary>Llama (RMSNorm, no biases: the shifts stay as a vector add) and GPT-2 (LayerNorm and biases: all folded in).</summary>
    [Theory]
    [InlineData("llama")]
    [InlineData("gpt2")]
    public void RlrrMergedAndUnmergedModelsAgree(string family)
    {
        using var scope = NewDisposeScope();
        using var model = family == "llama" ? Create()
            : (nn.Module<Tensor, Tensor>)RandomModel.Create(new Gpt2Config { VocabSize = 264, NEmbd = 32, NHead = 4, NLayer = 2, NPositions = 16 }, seed: 5);
        var ids = Ids(2, 7, seed: 3);
        var baseLogits = model.forward(ids);
        using var adapter = (RlrrAdapter)TrainableAdapter.Create(model, new RlrrConfig { TargetModules = ["all-linear"] }, seed: 2);
        Randomize(adapter, seed: 4);
        adapter.Attach(model);
        var unmerged = model.forward(ids);
        adapter.Merge(model);
        Assert.All(model.LinearLayers(), l => Assert.True(l.Layer.Adapter is null or BiasShift));
        Assert.All(model.NormLayers(), n => Assert.True(n.Layer.Adapter is null || (family == "llama" && n.Layer.Adapter is BiasShift)));
        AssertClose(unmerged, model.forward(ids), 1e-4);
        adapter.Unmerge(model);
        AssertClose(baseLogits, model.forward(ids), 1e-4);
    }

    /// <summary>DoRA: W' = m ⊙ (W + s·B A) / ‖W + s·B A‖ (norm per output over the inputs), y = W' x + b.</summary>
    [Fact]
    public void DoraFollowsTheWeightDecomposition()
    {
        using var scope = NewDisposeScope();
        var (layer, x) = Setup(bias: true);
        var config = new LoraConfig { Rank = 2, Alpha = 3, UseDora = true };
        using var g = new Generator(9);
        using var dora = new DoraLayer(layer, config, g);
        using (no_grad()) foreach (var p in dora.parameters()) p.normal_(0, 0.5, g);
        layer.Adapter = dora;
        var actual = layer.forward(x);

        double[,] w = Matrix(layer.weight), a = Matrix(dora.lora_A.weight!), bMat = Matrix(dora.lora_B.weight!);
        double[] m = Vector(dora.lora_magnitude_vector), bias = Vector(layer.bias!);
        var adapted = new double[Out, In];
        for (int o = 0; o < Out; o++)
        {
            var row = Enumerable.Range(0, In).Select(i => w[o, i] + config.Scaling * Enumerable.Range(0, config.Rank).Sum(k => bMat[o, k] * a[k, i])).ToArray();
            double norm = Math.Sqrt(row.Sum(v => v * v));
            for (int i = 0; i < In; i++) adapted[o, i] = m[o] * row[i] / norm;
        }
        var expected = Inputs(x).Select(r => r.Select(xt => Linear(adapted, bias, xt)).ToArray()).ToArray();
        AssertClose(FromNested(expected), actual, 1e-5);
    }

    /// <summary>
    /// MixLoRA per token with loops: softmax router, top-k renormalised, each chosen expert the frozen SwiGLU block with
    /// its own LoRA on gate, up, down; and Mixtral's load-balance loss N · Σₑ fₑ Pₑ.
    /// </summary>
    [Fact]
    public void MixLoraFollowsItsDesign()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        var mlp = (LlamaMlp)model.named_modules().First(m => m.module is LlamaMlp).module;
        var config = new MixLoraConfig { Rank = 2, Alpha = 3, NumExperts = 3, TopK = 2, AuxLossCoefficient = 1, TargetModules = [] };
        using var g = new Generator(12);
        using var block = new MixLoraBlock(mlp, config, g);
        using (no_grad()) foreach (var p in block.parameters()) p.normal_(0, 0.4, g);
        block.train();
        var x = randn([2, 3, Config.HiddenSize], generator: g);
        var actual = block.Forward(x, mlp);

        double[,] router = Matrix(block.mixlora_router.weight!), wg = Matrix(mlp.gate_proj.weight), wu = Matrix(mlp.up_proj.weight), wd = Matrix(mlp.down_proj.weight);
        double[] Apply(double[,] w, double[] v) => Enumerable.Range(0, w.GetLength(0)).Select(o => Enumerable.Range(0, v.Length).Sum(i => w[o, i] * v[i])).ToArray();
        double[] Lora(int e, string name, double[] v) =>
            Apply(Matrix(block.Expert(e, name).lora_B.weight!), Apply(Matrix(block.Expert(e, name).lora_A.weight!), v)).Select(d => d * config.Scaling).ToArray();
        var xs = Vector(x);
        int tokens = 6, hidden = Config.HiddenSize, experts = config.NumExperts;
        var expected = new double[tokens * hidden];
        var probabilities = new double[tokens][];
        var chosen = new int[tokens][];
        for (int t = 0; t < tokens; t++)
        {
            var h = xs.Skip(t * hidden).Take(hidden).ToArray();
            var logits = Apply(router, h);
            double max = logits.Max(), sum = logits.Sum(l => Math.Exp(l - max));
            probabilities[t] = logits.Select(l => Math.Exp(l - max) / sum).ToArray();
            chosen[t] = Enumerable.Range(0, experts).OrderByDescending(e => probabilities[t][e]).Take(config.TopK).ToArray();
            double norm = chosen[t].Sum(e => probabilities[t][e]);
            foreach (var e in chosen[t])
            {
                var gate = Apply(wg, h).Zip(Lora(e, "gate_proj", h), (a, b) => a + b).ToArray();
                var up = Apply(wu, h).Zip(Lora(e, "up_proj", h), (a, b) => a + b).ToArray();
                var act = gate.Zip(up, (a, b) => a / (1 + Math.Exp(-a)) * b).ToArray();
                var down = Apply(wd, act).Zip(Lora(e, "down_proj", act), (a, b) => a + b).ToArray();
                for (int o = 0; o < hidden; o++) expected[t * hidden + o] += probabilities[t][e] / norm * down[o];
            }
        }
        AssertClose(tensor(expected.Select(v => (float)v).ToArray(), [2, 3, hidden]), actual, 1e-5);

        double balance = experts * Enumerable.Range(0, experts).Sum(e =>
            Enumerable.Range(0, config.TopK).Sum(k => chosen.Count(c => c[k] == e) / (double)tokens) * probabilities.Average(p => p[e]));
        Assert.Equal(balance, block.AuxiliaryLoss!.item<float>(), 5);
    }

    /// <summary>RLRR on a LayerNorm (the SSF way, in residual form): y' = y + s ⊙ y + f with y = w ⊙ (x − μ) / σ + b.</summary>
    [Fact]
    public void RlrrRescalesANormsOutput()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(14);
        using var norm = new AdaptableLayerNorm(In, 1e-5);
        using var rlrr = new RlrrNormLayer(In);
        using (no_grad())
        {
            norm.weight.normal_(1, 0.3, g);
            norm.bias.normal_(0, 0.3, g);
            rlrr.rlrr_scale.normal_(0, 0.3, g);
            rlrr.rlrr_shift.normal_(0, 0.3, g);
        }
        norm.Adapter = rlrr;
        var x = randn([Rows, Tokens, In], generator: g);
        double[] w = Vector(norm.weight), b = Vector(norm.bias), sc = Vector(rlrr.rlrr_scale), f = Vector(rlrr.rlrr_shift);
        var expected = Inputs(x).Select(row => row.Select(xt =>
        {
            double mean = xt.Average(), variance = xt.Average(v => (v - mean) * (v - mean));
            return xt.Select((v, i) => { double y = w[i] * (v - mean) / Math.Sqrt(variance + 1e-5) + b[i]; return y + sc[i] * y + f[i]; }).ToArray();
        }).ToArray()).ToArray();
        AssertClose(FromNested(expected), norm.forward(x), 1e-5);
    }
}
