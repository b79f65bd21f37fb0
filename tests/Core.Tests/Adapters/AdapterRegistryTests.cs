using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Adapters;

/// <summary>
/// Every method <see cref="AdapterMethods"/> registers does what its descriptor declares, through the registry alone:
/// its options round-trip, it trains a step, saves and loads to the same outputs, serves in a batch mixed with another
/// method, and merges, combines and packs (token-wise) exactly where it says it can. A new method is tested by registering it.
/// </summary>
public sealed class AdapterRegistryTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("adapter-registry-").FullName;

    public AdapterRegistryTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    public static TheoryData<string> Methods => new(AdapterMethods.Names);

    static readonly string[] AllLinear = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"];

    /// <summary>A small config of the method as the API would make it (its default targets), the way every caller gets one.</summary>
    static AdapterConfig ConfigOf(AdapterMethod method) =>
        method.FromOptions(new AdapterOptions(Rank: 2, NumExperts: 2, TopK: 2), method.DefaultTargets(AllLinear));

    [Fact]
    public void NamesAndPeftTypesAreUniqueAndEveryMethodIsInTheMatrixTests()
    {
        Assert.Equal(AdapterMethods.Names.Count, AdapterMethods.Names.Distinct().Count());
        Assert.Equal(["lora", "dora", "lily", "rlrr", "mixlora"], AdapterMethods.Names);   // the API lists them in this order
        Assert.Equal(["lora", "rlrr"], AdapterMethods.Combinable);
        Assert.All(AdapterMethods.Names, name => Assert.Contains(name, MethodMatrixTests.MethodNames));
        Assert.Null(AdapterMethods.Find("mixture"));
        Assert.Equal("adapter_config.json: peft_type IA3 is not supported (LORA, LILY, RLRR, MIXLORA)",
            Assert.Throws<InvalidDataException>(() => AdapterConfig.Parse("""{"peft_type": "IA3", "target_modules": ["q_proj"]}""")).Message);
    }

    [Theory, MemberData(nameof(Methods))]
    public void ItsConfigRoundTripsThroughItsOptionsAndItsFile(string name)
    {
        var method = AdapterMethods.Find(name)!;
        var config = ConfigOf(method);
        Assert.Same(method, AdapterMethods.Of(config));
        Assert.Equal((name, method.PeftType, method.ConfigType), (config.Method, config.PeftType, config.GetType()));
        Assert.Equal(config.ToJson(), method.FromOptions(method.ToOptions(config), config.TargetModules).ToJson());
        Assert.Equal(config.ToJson(), AdapterConfig.Parse(config.ToJson()).ToJson());
    }

    [Theory, MemberData(nameof(Methods))]
    public void ItTrainsAStepSavesLoadsAndServesMixedWithAnotherMethod(string name)
    {
        using var scope = NewDisposeScope();
        var method = AdapterMethods.Find(name)!;
        var other = AdapterMethods.All[(AdapterMethods.All.ToList().IndexOf(method) + 1) % AdapterMethods.All.Count];
        using var model = Create();
        var ids = Ids(3, 6, seed: 8);
        var alone = new List<Tensor>();
        var folders = new List<string>();
        foreach (var (m, i) in new[] { (method, 0), (other, 1) })
        {
            using var adapter = TrainableAdapter.Create(model, ConfigOf(m), seed: i);
            Assert.Equal(m.TokenWise, adapter.TokenWise);
            if (m == method) TrainOneStep(model, adapter);
            else Randomize(adapter, seed: 11);
            adapter.Attach(model);
            alone.Add(model.forward(ids.narrow(0, i, 1)));
            TrainableAdapter.Detach(model);
            folders.Add(Path.Combine(dir, $"{i}-{m.Name}"));
            adapter.Save(folders[^1]);
            Assert.True(File.Exists(Path.Combine(folders[^1], AdapterConfig.FileName)) && File.Exists(Path.Combine(folders[^1], TrainableAdapter.WeightsFileName)));
        }
        alone.Add(model.forward(ids.narrow(0, 2, 1)));

        // Loaded for training (a resumed job): the same outputs, bit for bit.
        using (var loaded = TrainableAdapter.Create(model, AdapterConfig.Load(folders[0]), seed: 5))
        {
            loaded.LoadWeights(folders[0]);
            loaded.Attach(model);
            Assert.Equal(Bytes(alone[0]), Bytes(model.forward(ids.narrow(0, 0, 1))));
            TrainableAdapter.Detach(model);
        }

        // Loaded for serving, in one batch with a row of another method and a row without adapter.
        var served = folders.Select(f => (ServedAdapter?)ServedAdapter.Load(f, model)).Append(null).ToList();
        try
        {
            Assert.Same(method, AdapterMethods.Of(served[0]!.Config));
            using (RowAdapters.Attach(model, served, [0, 1, 2], states: null)) AssertClose(cat(alone), model.forward(ids), 2e-5);
        }
        finally
        {
            TrainableAdapter.Detach(model);
            foreach (var s in served) s?.Dispose();
        }
    }

    [Theory, MemberData(nameof(Methods))]
    public void ItMergesExactlyWhereItDeclaresIt(string name)
    {
        using var scope = NewDisposeScope();
        var method = AdapterMethods.Find(name)!;
        using var model = Create();
        using var adapter = TrainableAdapter.Create(model, ConfigOf(method), seed: 1);
        Randomize(adapter, seed: 4);
        adapter.Attach(model);
        var ids = Ids(2, 5, seed: 2);
        var adapted = model.forward(ids);
        if (!method.CanMerge)
        {
            Assert.Throws<NotSupportedException>(() => adapter.Merge(model));
            return;
        }
        adapter.Merge(model);
        Assert.All(model.LinearLayers(), l => Assert.True(l.Layer.Adapter is null or BiasShift));
        AssertClose(adapted, model.forward(ids), 1e-4);
    }

    [Theory, MemberData(nameof(Methods))]
    public void ItCombinesExactlyWhereItDeclaresIt(string name)
    {
        using var scope = NewDisposeScope();
        var method = AdapterMethods.Find(name)!;
        using var model = Create();
        var folders = new List<string>();
        for (int i = 0; i < 2; i++)
        {
            using var adapter = TrainableAdapter.Create(model, ConfigOf(method), seed: i);
            Randomize(adapter, seed: 20 + i);
            folders.Add(Path.Combine(dir, $"source-{i}"));
            adapter.Save(folders[^1]);
        }
        string output = Path.Combine(dir, "combined");
        Assert.Equal(method.CanCombine, AdapterMethods.Combinable.Contains(name));
        if (!method.CanCombine)
        {
            var refused = Assert.Throws<ArgumentException>(() => AdapterComposition.Combine(folders, [1, 0], output));
            Assert.Equal($"only adapters of one method, {string.Join(" or ", AdapterMethods.Combinable)}, can be combined; these are {name}", refused.Message);
            return;
        }
        var config = AdapterComposition.Combine(folders, [1, 0], output);   // the second weighs nothing: the first's outputs
        Assert.Same(method, AdapterMethods.Of(config));
        var ids = Ids(1, 5, seed: 6);
        using var first = ServedAdapter.Load(folders[0], model);
        using var combined = ServedAdapter.Load(output, model);
        Tensor Serve(ServedAdapter a) { using (RowAdapters.Attach(model, [a], [0], null)) try { return model.forward(ids); } finally { TrainableAdapter.Detach(model); } }
        AssertClose(Serve(first), Serve(combined), 1e-5);
    }

    /// <summary>A method that says it is token-wise (so training packs and checkpoints it) adapts each token alone and adds no loss.</summary>
    [Theory, MemberData(nameof(Methods))]
    public void TokenWiseMethodsAdaptEachTokenAlone(string name)
    {
        using var scope = NewDisposeScope();
        var method = AdapterMethods.Find(name)!;
        if (!method.TokenWise) return;
        using var model = Create();
        using var adapter = TrainableAdapter.Create(model, ConfigOf(method), seed: 1);
        Randomize(adapter, seed: 3);
        var linear = model.LinearLayers().ToDictionary(l => l.Path, l => (l.Layer.InFeatures, l.Layer.OutFeatures));
        var norms = model.NormLayers().ToDictionary(n => n.Path, n => (n.Layer.Size, n.Layer.Size));
        foreach (var (path, layer) in adapter.Layers)
        {
            var (inFeatures, outFeatures) = linear.TryGetValue(path, out var shape) ? shape : norms[path];
            var (x, y) = (randn(1, 4, inFeatures), randn(1, 4, outFeatures));
            var whole = ((ILinearAdapter)layer).Forward(x, y);
            var each = cat(Enumerable.Range(0, 4).Select(t => ((ILinearAdapter)layer).Forward(x.narrow(1, t, 1), y.narrow(1, t, 1))).ToArray(), 1);
            AssertClose(whole, each, 1e-5);
        }
        Assert.Null(adapter.AuxiliaryLoss());
    }

    /// <summary>One SGD step from a random point changes every parameter of the method and leaves the loss finite.</summary>
    static void TrainOneStep(LlamaForCausalLM model, TrainableAdapter adapter)
    {
        Randomize(adapter, seed: 5);
        adapter.Attach(model);
        adapter.Train(true);
        var before = adapter.Parameters().Select(p => p.clone()).ToList();
        foreach (var p in adapter.Parameters()) p.requires_grad = true;
        using var optimizer = optim.SGD(adapter.Parameters(), 0.1);
        var logits = model.forward(Ids(2, 6, seed: 4));
        var loss = nn.functional.cross_entropy(logits.view(-1, logits.shape[^1]), Ids(2, 6, seed: 9).view(-1));
        if (adapter.AuxiliaryLoss() is { } auxiliary) loss = loss + auxiliary;
        Assert.True(double.IsFinite(loss.item<float>()));
        loss.backward();
        optimizer.step();
        Assert.All(adapter.Parameters().Zip(before), p => Assert.NotEqual(Bytes(p.Second), Bytes(p.First)));
        adapter.Train(false);
        foreach (var p in adapter.Parameters()) p.requires_grad = false;
        TrainableAdapter.Detach(model);
    }
}
