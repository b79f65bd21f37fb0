using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using AdapterService.Core.Training;
using TorchSharp;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Torch;

/// <summary>
/// Repeated steps leave no tensors behind. Counts are TorchSharp's per-thread statistics (created minus disposed
/// on this thread), so tests running in parallel on other threads do not disturb them; a tensor left to the
/// garbage collector counts as live here.
/// </summary>
public sealed class TensorLeakTests : IDisposable
{
    readonly string dir = Directory.CreateTempSubdirectory("tensor-leak-tests-").FullName;

    public TensorLeakTests() => TorchRuntime.EnsureReady();

    public void Dispose() => Directory.Delete(dir, recursive: true);

    static long Live => DisposeScopeManager.Statistics.TensorStatistics.ThreadTotalLiveCount;

    public static TheoryData<string> Methods => new(["lora", "dora", "lily", "rlrr", "mixlora"]);

    static AdapterConfig ConfigOf(string method) => method switch
    {
        "lora" => new LoraConfig { Rank = 4, TargetModules = ["all-linear"] },
        "dora" => new LoraConfig { Rank = 4, TargetModules = ["all-linear"], UseDora = true },
        "lily" => new LilyConfig { Rank = 4, TargetModules = ["all-linear"] },
        "rlrr" => new RlrrConfig { TargetModules = ["all-linear"] },
        _ => new MixLoraConfig { Rank = 2, NumExperts = 3, TargetModules = ["q_proj"] },
    };

    [Theory, MemberData(nameof(Methods))]
    public void TrainingStepsDoNotAccumulateTensors(string method)
    {
        using var model = Create();
        using var adapter = TrainableAdapter.Create(model, ConfigOf(method));
        var examples = Enumerable.Range(0, 6)
            .Select(i => new TokenizedExample([ByteTokenizer.Begin, 'a' + i, 'b', 'c', ByteTokenizer.End], [false, false, true, true, true]))
            .ToList();
        var live = new List<long>();

        using (var trainer = new LanguageModelTrainer(model, adapter, examples, new Hyperparameters(3, 2, 1e-3), ByteTokenizer.End, 1))
            trainer.Run(_ => live.Add(Live), CancellationToken.None);

        Assert.Equal(9, live.Count);
        Assert.All(live.Skip(1), n => Assert.Equal(live[1], n));   // step 1 may create the optimizer's state
    }

    [Fact]
    public void CachedGenerationStepsDoNotAccumulateTensors()
    {
        using var model = Create();
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 4, TargetModules = ["q_proj", "v_proj"] });
        using var noGrad = no_grad();
        var slots = new List<RowLora>();   // as the inference engine serves an adapter
        foreach (var (path, layer) in model.LinearLayers())
            if (adapter.LoraLayers.TryGetValue(path, out var lora))
            {
                slots.Add(new RowLora([lora.Weights()], layer.InFeatures, layer.OutFeatures));
                layer.Adapter = slots[^1];
            }
        long before = Live;
        var cache = new KvCache(Config.NumHiddenLayers);
        var options = new SamplingOptions(MaxTokens: 20, Temperature: 0.8, TopP: 0.9);
        using var generator = new Generator(61);
        long[] input = [ByteTokenizer.Begin, 'h', 'i'];
        var live = new List<long>();

        for (int step = 0; step < 12; step++)
        {
            using (NewDisposeScope())
            {
                var logits = model.Forward(tensor(input, [1, input.Length]), cache);
                input = [Sampler.Next(logits[0, -1], options, generator)];
            }
            live.Add(Live);
        }
        Assert.All(live, n => Assert.Equal(live[0], n));

        cache.Dispose();
        Assert.Equal(before, Live);
        ClearAdapters(model);
        foreach (var s in slots) s.Dispose();
    }

    /// <summary>Every method's served form, gathered for a batch outside any dispose scope (as on the inference thread), frees all it made.</summary>
    [Theory, MemberData(nameof(Methods))]
    public void ServedAdaptersLeaveNothingBehind(string method)
    {
        using var model = Create();
        string folder = Path.Combine(dir, method);
        using (var adapter = TrainableAdapter.Create(model, ConfigOf(method))) adapter.Save(folder);
        using var noGrad = no_grad();
        long before = Live;
        using (var served = ServedAdapter.Load(folder, model))
        {
            List<ServedAdapter?> rows = [served, null, served];
            var slots = new List<long> { 0, 1, 2 };
            using var store = zeros(3, 8);
            var made = model.LinearLayers().Select(l => (IDisposable)new RowAdapter(l.Path, l.Layer, rows, slots, (_, _) => store))
                .Concat(model.NormLayers().Select(n => (IDisposable?)RowNorm.For(n.Path, n.Layer.Size, rows)).OfType<IDisposable>())
                .Concat(model.named_modules().Select(m => (IDisposable?)RowFeedForward.For(m.name, rows)).OfType<IDisposable>()).ToList();
            foreach (var m in made) m.Dispose();
        }
        Assert.Equal(before, Live);
    }

    // Fails until RowLora's constructor disposes its temporaries (a[i], narrow views, w.B * scaling):
    // the inference engine builds RowLoras outside any dispose scope, once per layer per request.
    [Fact]
    public void RowLoraLeavesNoTemporariesBehind()
    {
        // No dispose scope here, as on the inference thread.
        Tensor a = randn(2, 6), b = randn(5, 2);
        long before = Live;
        using (new RowLora([new LoraWeights(a, b, 2.0), null], 6, 5)) { }
        Assert.Equal(before, Live);
        a.Dispose();
        b.Dispose();
    }

    // Fails unless ServedAdapter.Load disposes the tensors SafeTensors.Load gave it that it does not keep.
    [Fact]
    public void LoadingAnAdapterLeavesOnlyTheWeightsItReturns()
    {
        using var model = Create();
        using (var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = 2 }))
        using (NewDisposeScope())
            adapter.Save(dir);
        long before = Live;
        using (ServedAdapter.Load(dir, model)) { }   // the served adapter frees what it kept
        Assert.Equal(before, Live);
    }
}
