using AdapterService.Core.Models;
using AdapterService.Core.Pretraining;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Pretraining;

public class LanguageModelPretrainingTests
{
    /// <summary>A few hundred fortunes, a tiny model and vocabulary: seconds, not the default's minutes.</summary>
    public static readonly LanguageModelPretrainingOptions Tiny = new()
    {
        MaxEntries = 400, VocabSize = 400, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 2,
        ContextLength = 32, Steps = 60, BatchSize = 8, LearningRate = 5e-3, ValidateEverySteps = 20, ValidationWindows = 16,
    };

    [Fact]
    public void PretrainsOnFortunesAndWritesALoadableFolder()
    {
        TorchRuntime.EnsureReady();
        var folder = Directory.CreateTempSubdirectory("lm-pretraining-").FullName;
        try
        {
            var progress = new List<PretrainingProgress>();
            var result = LanguageModelPretraining.CreateFolder(folder, Tiny, progress.Add);

            Assert.Equal(Enumerable.Range(1, 60), progress.Select(p => p.Step));
            var validated = progress.Where(p => p.ValidLoss is not null).ToList();
            Assert.Equal([20, 40, 60], validated.Select(p => p.Step));
            // From ln(400) ≈ 6 at the start, training and held-out losses both fall.
            Assert.True(progress.Take(5).Average(p => p.Loss) - progress.TakeLast(5).Average(p => p.Loss) > 1,
                $"training loss {progress[0].Loss:0.00} → {progress[^1].Loss:0.00}");
            Assert.True(validated[^1].ValidLoss < validated[0].ValidLoss, string.Join(", ", validated.Select(p => p.ValidLoss)));
            Assert.Equal(validated[^1].ValidLoss, result.FinalValidLoss);
            Assert.Equal((380, 20), (result.TrainEntries, result.ValidEntries));
            Assert.Contains("fortunes", result.Describe());

            using var model = ModelFolder.Load<LlamaForCausalLM>(folder);
            Assert.Equal((400, 32), (model.VocabSize, model.ContextLength));
            var tokenizer = Assert.IsType<HfTokenizer>(TextTokenizers.Read(folder));
            Assert.Equal([0], tokenizer.EosIds);
            var ids = tokenizer.Encode("A fortune", addSpecialTokens: true);
            using var logits = model.forward(tensor(ids.Select(i => (long)i).ToArray()).unsqueeze(0));
            Assert.Equal([1, ids.Count, 400], logits.shape);
        }
        finally { Directory.Delete(folder, recursive: true); }
    }
}
