using System.Globalization;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Pretraining;
using AdapterService.Core.Text;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Pre-trains the built-in language model with the default settings (what POST /v1/models/fortunes-llama-demo/pretrain
/// runs), reports its loss curve, and generates from a few prompts with the trained model, greedy and sampled.
/// </summary>
sealed class LanguageModelRun(bool quick)
{
    static readonly string[] Prompts = ["The meaning of life is", "Q: Why did the chicken cross the road?\nA:", "A computer", "Love is"];

    public void Run(Action<string> line)
    {
        var options = quick ? new LanguageModelPretrainingOptions { Steps = 40, ValidateEverySteps = 10 } : new LanguageModelPretrainingOptions();
        line($"Corpus: {options.CorpusFolder} ({FortunesCorpus.Files(options.CorpusFolder).Count()} files); options: {options}");
        line("");
        line("| step | training loss (mean of the steps since the last row) | validation loss | validation next-token accuracy | learning rate | tokens/s |");
        line("|---:|---:|---:|---:|---:|---:|");
        var folder = Path.Combine(Path.GetTempPath(), "fortunes-llama-demo-" + Guid.NewGuid().ToString("N"));
        var losses = new List<double>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var result = LanguageModelPretraining.CreateFolder(folder, options, p =>
        {
            if (p.Step == 1) Console.WriteLine($"(tokenizer trained and corpus tokenized, first step done after {clock.Elapsed.TotalSeconds:0} s)");
            losses.Add(p.Loss);
            if (p.ValidLoss is not { } valid) return;
            line(string.Create(CultureInfo.InvariantCulture,
                $"| {p.Step} | {losses.Average():0.000} | {valid:0.000} | {p.ValidAccuracy:P1} | {p.LearningRate:0.00e0} | {p.ItemsPerSecond:0} |"));
            losses.Clear();
        });
        line("");
        line($"{result.Describe()}");
        line(string.Create(CultureInfo.InvariantCulture, $"Pre-training took {result.Seconds / 60:0.0} minutes; folder: {folder}"));
        line("");
        using var model = ModelFolder.Load<LlamaForCausalLM>(folder);
        var tokenizer = HfTokenizer.Load(folder);
        using var generator = new Generator().manual_seed(1);
        foreach (var prompt in Prompts)
        {
            line($"Prompt: `{prompt.Replace("\n", "\\n")}`");
            line($"- greedy: `{Generate(model, tokenizer, prompt, temperature: 0, generator).Replace("\n", "\\n")}`");
            line($"- sampled (temperature 0.8): `{Generate(model, tokenizer, prompt, temperature: 0.8, generator).Replace("\n", "\\n")}`");
            line("");
        }
    }

    /// <summary>Up to 48 new tokens after the prompt, stopping at end of text; the whole sequence is re-run per token (short, so no cache needed).</summary>
    static string Generate(LlamaForCausalLM model, HfTokenizer tokenizer, string prompt, double temperature, Generator generator)
    {
        var ids = tokenizer.Encode(prompt, addSpecialTokens: true).ToList();
        int promptLength = ids.Count;
        for (int i = 0; i < 48 && ids.Count < model.ContextLength; i++)
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var logits = model.forward(tensor(ids.Select(t => (long)t).ToArray()).unsqueeze(0))[0, -1];
            int next = temperature == 0
                ? (int)logits.argmax().item<long>()
                : (int)multinomial(nn.functional.softmax(logits / temperature, 0), 1, generator: generator).item<long>();
            if (tokenizer.EosIds.Contains(next)) break;
            ids.Add(next);
        }
        return tokenizer.Decode([.. ids.Skip(promptLength)], skipSpecialTokens: true);
    }
}
