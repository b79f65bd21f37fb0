using System.Text.Json.Nodes;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using TorchSharp.Modules;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

/// <summary>The base's precision (<see cref="BasePrecision"/>): what a bf16 base computes, how folders load and save.</summary>
public sealed class PrecisionTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("precision-tests-").FullName;

    public PrecisionTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    /// <summary>A model whose weight matrices are converted to <paramref name="type"/> (f16 has no setting; files can hold it).</summary>
    static LlamaForCausalLM WithMatrices(LlamaForCausalLM model, ScalarType type)
    {
        using var noGrad = no_grad();
        foreach (var m in model.named_modules().Select(m => m.module).OfType<IStoredMatrix>().ToList())
            if (m.Matrix.dtype != type)
            {
                var old = m.Matrix;
                var converted = new Parameter(old.to_type(type), requires_grad: false);
                foreach (var holder in model.named_modules().Select(h => h.module).OfType<IStoredMatrix>().Where(h => ReferenceEquals(h.Matrix, old)).ToList())
                    holder.ReplaceWeight(converted);
            }
        return model;
    }

    static AdaptableLinear Layer(nn.Module model, string path) => model.LinearLayers().Single(l => l.Path == path).Layer;

    static IEnumerable<Tensor> MatrixWeights(nn.Module model) => model.named_modules().Select(m => m.module).OfType<IStoredMatrix>().Select(m => (Tensor)m.Matrix);

    [Fact]
    public void ABf16LinearIsTheFloat64ProductOfItsRoundedOperands()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(7);
        var layer = new AdaptableLinear(48, 24, hasBias: true);
        using (no_grad())
        {
            layer.weight.normal_(0, 0.2, g);
            layer.bias!.normal_(0, 1, g);
        }
        layer.ReplaceWeight(new Parameter(layer.weight.to_type(ScalarType.BFloat16), requires_grad: false));
        var x = randn([3, 5, 48], generator: g);

        var y = layer.forward(x);

        Assert.Equal(ScalarType.Float32, y.dtype);   // the residual stream and adapters see float32
        var product = x.to_type(ScalarType.BFloat16).to_type(ScalarType.Float64)
            .matmul(layer.weight.to_type(ScalarType.Float64).t());                             // [3, 5, 24], exact in float64
        var reference = product + layer.bias!.to_type(ScalarType.Float64);
        // The matmul accumulates in float32 and rounds its output to bf16 (unit roundoff 2⁻⁸ relative); the bias adds in float32.
        var error = (y.to_type(ScalarType.Float64) - reference).abs();
        var bound = product.abs() * Math.Pow(2, -8) + 1e-5;
        Assert.True(error.le(bound).all().item<bool>(), $"worst excess {(error - bound).max().item<double>():E2}");
        // and it did round: float32 arithmetic on the same weights gives other bytes
        Assert.NotEqual(Bytes(nn.functional.linear(x, layer.weight.to_type(ScalarType.Float32), layer.bias)), Bytes(y));
    }

    [Fact]
    public void ABf16ModelFollowsTheFloat32OneAndPicksTheSameClearGreedyTokens()
    {
        using var scope = NewDisposeScope();
        using var fp32 = Create(seed: 21);
        using var bf16 = BasePrecision.BFloat16.Apply(Create(seed: 21));
        Assert.All(MatrixWeights(bf16), w => Assert.Equal(ScalarType.BFloat16, w.dtype));
        var ids = Ids(4, 24, seed: 22);
        using var noGrad = no_grad();

        var (expected, actual) = (fp32.forward(ids), bf16.forward(ids));

        Assert.Equal(ScalarType.Float32, actual.dtype);
        // bf16 rounds each matmul's operands and output to 8 significant bits (2⁻⁸ relative): through two layers and the
        // head the logits (of standard deviation about 1 here) stay within 0.1 of float32's.
        const double Tolerance = 0.1;
        double worst = (expected - actual).abs().max().item<float>();
        Assert.True(worst <= Tolerance, $"largest logit difference {worst}");
        Assert.True(worst > 0, "the bf16 model computed in bf16");
        // Wherever float32's best token leads the second by more than twice the tolerance, bf16 picks the same.
        var top = expected.topk(2, -1).values;                                                // [4, 24, 2]
        var clear = (top.select(-1, 0) - top.select(-1, 1)).gt(2 * Tolerance);                 // [4, 24]
        Assert.True(clear.sum().item<long>() >= 24, $"only {clear.sum().item<long>()} of 96 positions have a clear margin");
        Assert.True(expected.argmax(-1).eq(actual.argmax(-1)).logical_or(clear.logical_not()).all().item<bool>());
    }

    [Fact]
    public void ABf16FolderLoadsMappedInBf16WithoutAFloat32Copy()
    {
        using var scope = NewDisposeScope();
        using var source = BasePrecision.BFloat16.Apply(Create(seed: 31, Config with { TieWordEmbeddings = true }));
        using (no_grad())   // norms the file can hold exactly (a bf16 file rounds them), so that the loaded model computes the same bytes
            foreach (var (_, norm) in source.NormLayers()) norm.Weight.copy_(norm.Weight.to_type(ScalarType.BFloat16));
        ModelFolder.Save(source, dir);
        Assert.Equal("bfloat16", JsonNode.Parse(File.ReadAllText(Path.Combine(dir, ModelFolder.ConfigFile)))!["torch_dtype"]!.GetValue<string>());
        Assert.All(SafeTensors.ReadHeader(Path.Combine(dir, ModelFolder.WeightsFile)).Tensors, t => Assert.Equal("BF16", t.DType));

        using var loaded = ModelFolder.Load<LlamaForCausalLM>(dir, BasePrecision.BFloat16);

        // Matrices 2 bytes an element, norms float32 (widened from the file): no float32 copy of any matrix is kept.
        Assert.All(MatrixWeights(loaded), w => Assert.Equal((ScalarType.BFloat16, 2), (w.dtype, w.ElementSize)));
        Assert.All(loaded.NormLayers(), n => Assert.Equal(ScalarType.Float32, n.Layer.Weight.dtype));
        Assert.Same(loaded.model.embed_tokens.weight, loaded.lm_head.weight);   // a tied head stays tied
        long bytes = loaded.parameters().Sum(p => p.NumberOfElements * p.ElementSize);
        long matrices = MatrixWeights(loaded).Distinct().Sum(w => w.NumberOfElements);
        long norms = loaded.NormLayers().Sum(n => n.Layer.Weight.NumberOfElements);
        Assert.Equal(2 * matrices + 4 * norms, bytes);
        if (OperatingSystem.IsLinux())   // mapped from the file, not read into new memory
            Assert.Contains(Path.Combine(dir, ModelFolder.WeightsFile), File.ReadAllText("/proc/self/maps"));
        var ids = Ids(2, 7, seed: 32);
        using var noGrad = no_grad();
        Assert.Equal(Bytes(source.forward(ids)), Bytes(loaded.forward(ids)));

        // The mapping is private: writing a weight (as merging does) leaves the file as it was.
        byte[] file = File.ReadAllBytes(Path.Combine(dir, ModelFolder.WeightsFile));
        Layer(loaded, "model.layers.0.mlp.up_proj").weight.add_(1);
        Assert.Equal(file, File.ReadAllBytes(Path.Combine(dir, ModelFolder.WeightsFile)));
    }

    /// <summary>File type × setting → the type the matrices are kept in.</summary>
    public static TheoryData<string, string, string> Conversions => new()
    {
        { "BFloat16", "fp32", "Float32" },     // widened once at load: exact float32 arithmetic, twice the memory
        { "Float32", "bf16", "BFloat16" },     // converted once at load: half the memory
        { "Float16", "bf16", "BFloat16" },     // f16 is converted to bf16 once (CPUs multiply bf16, not f16, fast)
        { "Float16", "stored", "Float16" },    // merging and exporting keep the file's type
        { "BFloat16", "stored", "BFloat16" },
        { "Float32", "fp32", "Float32" },
    };

    [Theory, MemberData(nameof(Conversions))]
    public void ThePrecisionDecidesTheTypeOfEachFilesMatrices(string file, string setting, string kept)
    {
        using var scope = NewDisposeScope();
        var (fileType, keptType) = (Enum.Parse<ScalarType>(file), Enum.Parse<ScalarType>(kept));
        using var source = WithMatrices(Create(seed: 41), fileType);
        ModelFolder.Save(source, dir);
        var precision = setting == "stored" ? BasePrecision.AsStored : BasePrecision.Resolve(setting);

        using var loaded = ModelFolder.Load<LlamaForCausalLM>(dir, precision);

        foreach (var (a, b) in MatrixWeights(source).Zip(MatrixWeights(loaded)))
        {
            Assert.Equal(keptType, b.dtype);
            Assert.Equal(Bytes(a.to_type(keptType)), Bytes(b));   // one conversion of the stored values, no other rounding
        }
        Assert.All(loaded.NormLayers(), n => Assert.Equal(ScalarType.Float32, n.Layer.Weight.dtype));
        using var noGrad = no_grad();
        Assert.Equal(ScalarType.Float32, loaded.forward(Ids(1, 4, seed: 42)).dtype);
    }

    [Fact]
    public void MergingALoraIntoABf16BaseAndSavingKeepsBf16()
    {
        using var scope = NewDisposeScope();
        using (var source = BasePrecision.BFloat16.Apply(Create(seed: 51))) ModelFolder.Save(source, dir);
        using var model = ModelFolder.Load<LlamaForCausalLM>(dir, BasePrecision.AsStored);
        var before = Layer(model, "model.layers.1.self_attn.q_proj").weight.clone();
        using var adapter = (LoraAdapter)TrainableAdapter.Create(model, new LoraConfig { Rank = 2, Alpha = 4, TargetModules = ["q_proj", "v_proj"] }, seed: 1);
        Randomize(adapter, seed: 52);
        adapter.Attach(model);
        var ids = Ids(2, 6, seed: 53);
        Tensor attached;
        using (no_grad()) attached = model.forward(ids);

        adapter.Merge(model);
        string merged = Path.Combine(dir, "merged");
        ModelFolder.Save(model, merged);

        Assert.Equal("bfloat16", JsonNode.Parse(File.ReadAllText(Path.Combine(merged, ModelFolder.ConfigFile)))!["torch_dtype"]!.GetValue<string>());
        Assert.All(SafeTensors.ReadHeader(Path.Combine(merged, ModelFolder.WeightsFile)).Tensors, t => Assert.Equal("BF16", t.DType));
        // W + ΔW is formed in float32 and rounded to bf16 once.
        var w = adapter.Weights()["model.layers.1.self_attn.q_proj"];
        var expected = (before.to_type(ScalarType.Float32) + Lora.DeltaWeight(w.A, w.B, w.Scaling)).to_type(ScalarType.BFloat16);
        Assert.Equal(Bytes(expected), Bytes(Layer(model, "model.layers.1.self_attn.q_proj").weight));
        using var reloaded = ModelFolder.Load<LlamaForCausalLM>(merged, BasePrecision.BFloat16);
        using var noGrad = no_grad();
        // The merged bf16 model computes what the bf16 base with the adapter attached did, to bf16 rounding.
        AssertClose(attached, reloaded.forward(ids), 0.1);
    }

    /// <summary>A GGUF export of a bf16 base (loaded as stored) is the export of the same weights widened to float32, byte for byte, in every type.</summary>
    [Theory]
    [InlineData("F32")]
    [InlineData("F16")]
    [InlineData("BF16")]
    [InlineData("Q8_0")]
    public void AGgufExportOfABf16BaseEqualsThatOfItsFloat32Widening(string type)
    {
        using var scope = NewDisposeScope();
        using (var source = BasePrecision.BFloat16.Apply(Create(seed: 61))) ModelFolder.Save(source, dir);
        using var stored = ModelFolder.Load<LlamaForCausalLM>(dir, BasePrecision.AsStored);
        using var widened = ModelFolder.Load<LlamaForCausalLM>(dir, BasePrecision.Float32);
        Assert.Equal(ScalarType.BFloat16, stored.lm_head.weight.dtype);
        byte[] Export(LlamaForCausalLM model)
        {
            using var output = new MemoryStream();
            Core.Exports.GgufExport.Write(output, model, dir, "test", Enum.Parse<GgufType>(type), template: null);
            return output.ToArray();
        }
        Assert.Equal(Export(widened), Export(stored));
    }

    [Theory]
    [InlineData("fp32", "Float32")]
    [InlineData("FP32", "Float32")]
    [InlineData("bf16", "BFloat16")]
    [InlineData("bfloat16", "BFloat16")]
    public void SettingsResolve(string setting, string type) =>
        Assert.Equal(Enum.Parse<ScalarType>(type), BasePrecision.Resolve(setting).MatrixType);

    [Fact]
    public void AutoFollowsTheCpusBf16InstructionsAndABadValueIsNamed()
    {
        var auto = BasePrecision.Resolve(null);
        Assert.Equal(BasePrecision.CpuHasBf16Matmul() ? ScalarType.BFloat16 : ScalarType.Float32, auto.MatrixType);
        Assert.Equal(auto.MatrixType, BasePrecision.Resolve("auto").MatrixType);
        Assert.StartsWith(auto.MatrixType == ScalarType.BFloat16 ? "bf16 (auto" : "fp32 (auto", auto.Description);
        var e = Assert.Throws<ArgumentException>(() => BasePrecision.Resolve("fp8"));
        Assert.Equal("Models:Precision is 'fp8'; it must be one of auto, bf16, fp32", e.Message);
    }
}
