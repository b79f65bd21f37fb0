using AdapterService.Core.Adapters;
using AdapterService.Core.Torch;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Adapters;

public sealed class AdapterCompositionTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("composition-").FullName;

    public AdapterCompositionTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    string Save(TrainableAdapter adapter, string name)
    {
        var folder = Path.Combine(dir, name);
        adapter.Save(folder);
        return folder;
    }

    [Fact]
    public void CombinedLoraIsTheWeightedSumOfTheUpdates()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        string[] targets = ["q_proj", "down_proj"];
        using var a = LoraAdapter.Create(model, new LoraConfig { Rank = 2, Alpha = 3, TargetModules = targets }, seed: 1);
        using var b = LoraAdapter.Create(model, new LoraConfig { Rank = 5, Alpha = 2, TargetModules = targets, UseRsLora = true }, seed: 2);
        Randomize(a, 3);
        Randomize(b, 4);
        var config = (LoraConfig)AdapterComposition.Combine([Save(a, "a"), Save(b, "b")], [0.5, -2], Path.Combine(dir, "sum"));
        Assert.Equal(7, config.Rank);
        using var sum = ServedAdapter.Load(Path.Combine(dir, "sum"), model);
        foreach (var (path, w) in sum.Lora)
        {
            var (wa, wb) = (a.LoraLayers[path].Weights(), b.LoraLayers[path].Weights());
            var expected = wa.B.matmul(wa.A) * (0.5 * wa.Scaling) + wb.B.matmul(wb.A) * (-2 * wb.Scaling);
            AssertClose(expected, w.B.matmul(w.A) * w.Scaling, 1e-5);
        }
    }

    [Fact]
    public void CombinedRlrrIsTheWeightedSumOfTheRescalings()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var a = TrainableAdapter.Create(model, new RlrrConfig { TargetModules = ["v_proj"] }, seed: 1);
        using var b = TrainableAdapter.Create(model, new RlrrConfig { Rank = 2, TargetModules = ["v_proj"] }, seed: 2);
        Randomize(a, 3);
        Randomize(b, 4);
        AdapterComposition.Combine([Save(a, "a"), Save(b, "b")], [1.5, 0.25], Path.Combine(dir, "sum"));
        using var sum = TrainableAdapter.Create(model, AdapterConfig.Load(Path.Combine(dir, "sum")));
        sum.LoadWeights(Path.Combine(dir, "sum"));
        foreach (var (path, module) in sum.Layers.Where(l => l.Value is RlrrNormLayer))
        {
            var (na, nb, ns) = ((RlrrNormLayer)a.Layers[path], (RlrrNormLayer)b.Layers[path], (RlrrNormLayer)module);
            AssertClose(na.rlrr_scale * 1.5 + nb.rlrr_scale * 0.25, ns.rlrr_scale, 1e-6);
            AssertClose(na.rlrr_shift * 1.5 + nb.rlrr_shift * 0.25, ns.rlrr_shift, 1e-6);
        }
        foreach (var (path, module) in sum.Layers.Where(l => l.Value is RlrrLayer))
        {
            var (la, lb, ls) = ((RlrrLayer)a.Layers[path], (RlrrLayer)b.Layers[path], (RlrrLayer)module);
            var w = ones(ls.rlrr_s_left.shape[1]);   // ΔW / W, independent of W
            AssertClose(Rlrr.DeltaWeight(w.expand(ls.rlrr_s_right.shape[1], -1), la.rlrr_s_left, la.rlrr_s_right) * 1.5
                      + Rlrr.DeltaWeight(w.expand(ls.rlrr_s_right.shape[1], -1), lb.rlrr_s_left, lb.rlrr_s_right) * 0.25,
                Rlrr.DeltaWeight(w.expand(ls.rlrr_s_right.shape[1], -1), ls.rlrr_s_left, ls.rlrr_s_right), 1e-5);
            AssertClose(la.rlrr_f * 1.5 + lb.rlrr_f * 0.25, ls.rlrr_f, 1e-6);
        }
    }

    [Fact]
    public void AdaptersOfOtherMethodsOrLayersAreRefused()
    {
        using var model = Create();
        using var lora = LoraAdapter.Create(model, new LoraConfig { TargetModules = ["q_proj"] });
        using var other = LoraAdapter.Create(model, new LoraConfig { TargetModules = ["v_proj"] });
        using var lily = TrainableAdapter.Create(model, new LilyConfig { TargetModules = ["q_proj"] });
        string output = Path.Combine(dir, "out");
        Assert.Contains("different layers", Assert.Throws<ArgumentException>(() => AdapterComposition.Combine([Save(lora, "l"), Save(other, "o")], [1, 1], output)).Message);
        Assert.Contains("one method", Assert.Throws<ArgumentException>(() => AdapterComposition.Combine([Save(lora, "l2"), Save(lily, "y")], [1, 1], output)).Message);
        Assert.Throws<ArgumentException>(() => AdapterComposition.Combine([Save(lora, "l3")], [1], output));
    }
}
