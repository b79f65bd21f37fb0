using AdapterService.Core.Models;
using AdapterService.Core.Adapters;
using AdapterService.Core.Torch;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Adapters;

public sealed class RowLoraTests
{
    public RowLoraTests() => TorchRuntime.EnsureReady();

    [Fact]
    public void MixedBatchGivesEachRowTheLogitsOfItsOwnAdapterAlone()
    {
        using var scope = NewDisposeScope();
        using var model = Create();
        using var _ = no_grad();
        using var x = LoraAdapter.Create(model, new LoraConfig { Rank = 2, Alpha = 4, TargetModules = ["all-linear"] });
        using var y = LoraAdapter.Create(model, new LoraConfig { Rank = 5, Alpha = 3, TargetModules = ["q_proj", "v_proj", "down_proj", "lm_head"] });
        Randomize(x, seed: 31);
        Randomize(y, seed: 32);
        x.Train(false);
        y.Train(false);
        LoraAdapter?[] rowAdapters = [x, null, y];
        var ids = Ids(3, 8, seed: 33);

        var alone = new List<Tensor>();
        for (int row = 0; row < 3; row++)
        {
            ClearAdapters(model);
            var unadapted = model.forward(ids.narrow(0, row, 1))[0];
            rowAdapters[row]?.Attach(model);
            alone.Add(model.forward(ids.narrow(0, row, 1))[0]);
            Assert.Equal(rowAdapters[row] is null, allclose(unadapted, alone[row], 1e-3, 1e-3));   // the adapters matter
        }
        ClearAdapters(model);

        var slots = new List<RowLora>();
        try
        {
            foreach (var (path, layer) in model.LinearLayers())
            {
                var rows = rowAdapters.Select(a => a?.LoraLayers.GetValueOrDefault(path)?.Weights()).ToList();
                if (rows.All(r => r is null)) continue;
                var slot = new RowLora(rows, layer.InFeatures, layer.OutFeatures);
                slots.Add(slot);
                layer.Adapter = slot;
            }
            var mixed = model.forward(ids);

            for (int row = 0; row < 3; row++) AssertClose(alone[row], mixed[row], 1e-5);
        }
        finally
        {
            ClearAdapters(model);
            foreach (var s in slots) s.Dispose();
        }
    }
}
