using System.Diagnostics;
using System.Globalization;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Pretraining;

/// <summary>How the built-in language model is pre-trained (<c>Text:Pretraining</c> in settings).</summary>
public sealed record LanguageModelPretrainingOptions
{
    /// <summary>Where the fortune files are (Debian's package's folder by default).</summary>
    public string CorpusFolder { get; init; } = FortunesCorpus.DefaultFolder;
    /// <summary>Use only this many entries, spread evenly over the corpus (0: all); a smaller corpus for tests.</summary>
    public int MaxEntries { get; init; }
    /// <summary>Every this-many-th entry is held out for the validation loss.</summary>
    public int ValidationEvery { get; init; } = 20;
    public int VocabSize { get; init; } = 4096;
    public int HiddenSize { get; init; } = 192;
    public int IntermediateSize { get; init; } = 512;
    public int NumHiddenLayers { get; init; } = 4;
    public int NumAttentionHeads { get; init; } = 4;
    public int ContextLength { get; init; } = 128;
    public int Steps { get; init; } = 300;
    /// <summary>Windows of <see cref="ContextLength"/> tokens per step.</summary>
    public int BatchSize { get; init; } = 16;
    public double LearningRate { get; init; } = 2e-3;
    public int ValidateEverySteps { get; init; } = 25;
    /// <summary>Windows of held-out text the validation loss is measured on (at most; fewer when the held-out text is short).</summary>
    public int ValidationWindows { get; init; } = 32;
    public long Seed { get; init; } = 20261123;
}

/// <summary>What pre-training did, recorded in the model's description.</summary>
public sealed record LanguageModelPretrainingResult(
    LlamaConfig Config, int Files, int TrainEntries, int ValidEntries, long CorpusBytes, long TrainTokens, long ValidTokens, int Steps, int BatchSize,
    double FinalTrainLoss, double FinalValidLoss, double Seconds)
{
    public string Describe() => string.Create(CultureInfo.InvariantCulture,
        $"Small demo Llama-style language model ({Config.NumHiddenLayers} layers, hidden {Config.HiddenSize}, context {Config.MaxPositionEmbeddings}, byte-level BPE vocabulary of {Config.VocabSize:N0} trained on the same text) pre-trained from scratch by this service on Debian's fortunes package: {TrainEntries:N0} quotations, jokes and poems from {Files} files ({CorpusBytes / 1e6:0.0} MB, {TrainTokens:N0} tokens), {Steps:N0} steps of {BatchSize}×{Config.MaxPositionEmbeddings} tokens; final training loss {FinalTrainLoss:0.000}, validation loss {FinalValidLoss:0.000} on {ValidEntries:N0} held-out entries ({ValidTokens:N0} tokens). It writes fortune-style English; fine-tune it with prompt/completion examples.");
}

/// <summary>
/// Pre-trains the built-in language model from scratch on the fortunes corpus: a byte-level BPE tokenizer is trained on
/// the training entries, the entries are joined into one token stream (each after an end-of-text token), and a small
/// Llama learns next-token prediction on random windows of it with the shared <see cref="Pretrainer"/> loop (AdamW,
/// weight decay 0.1), its loss on held-out entries measured every <see cref="LanguageModelPretrainingOptions.ValidateEverySteps"/>.
/// </summary>
public static class LanguageModelPretraining
{
    /// <summary>Separates entries, and is the model's begin and end of text (as GPT-2's is).</summary>
    public const string EndOfText = "<|endoftext|>";

    /// <summary>Pre-trains on the corpus <paramref name="options"/> name and writes the Hugging Face folder (weights, config, tokenizer) into <paramref name="folder"/>.</summary>
    public static LanguageModelPretrainingResult CreateFolder(
        string folder, LanguageModelPretrainingOptions options, Action<PretrainingProgress>? progress = null, CancellationToken cancel = default)
    {
        var clock = Stopwatch.StartNew();
        var entries = FortunesCorpus.Load(options.CorpusFolder);
        if (options.MaxEntries > 0 && entries.Count > options.MaxEntries)
            entries = Enumerable.Range(0, options.MaxEntries).Select(i => entries[(int)((long)i * entries.Count / options.MaxEntries)]).ToList();
        var train = entries.Where((_, i) => i % options.ValidationEvery != options.ValidationEvery - 1).ToList();
        var valid = entries.Where((_, i) => i % options.ValidationEvery == options.ValidationEvery - 1).ToList();

        var vocabulary = BpeTrainer.Train(train, options.VocabSize, [EndOfText]);
        var config = new LlamaConfig
        {
            VocabSize = vocabulary.Tokens.Count, HiddenSize = options.HiddenSize, IntermediateSize = options.IntermediateSize,
            NumHiddenLayers = options.NumHiddenLayers, NumAttentionHeads = options.NumAttentionHeads, MaxPositionEmbeddings = options.ContextLength,
            BosTokenId = 0, EosTokenId = 0, TieWordEmbeddings = false,
        };
        // The tokenizer as served reads what it needs from these files, so training text goes through that same tokenizer.
        vocabulary.Save(folder, EndOfText, EndOfText, options.ContextLength);
        config.Save(Path.Combine(folder, ModelFolder.ConfigFile));
        var tokenizer = HfTokenizer.Load(folder);
        int[] trainTokens = Stream(tokenizer, train), validTokens = Stream(tokenizer, valid);
        int window = options.ContextLength + 1;
        if (trainTokens.Length <= window) throw new ArgumentException($"the corpus has {trainTokens.Length} training tokens, fewer than one window of {window}");
        var validWindows = Enumerable.Range(0, Math.Min(options.ValidationWindows, validTokens.Length / window))
            .Select(i => validTokens.AsSpan(i * window, window).ToArray()).ToList();

        using var model = RandomModel.Create(config, options.Seed);
        var random = new Random(unchecked((int)options.Seed));
        var schedule = new PretrainingSchedule(options.Steps, options.LearningRate, WeightDecay: 0.1, options.ValidateEverySteps);
        (double Loss, double Accuracy)? lastValid = null;
        var last = Pretrainer.Run(model, schedule, _ =>
        {
            var batch = Enumerable.Range(0, options.BatchSize).Select(_ => trainTokens.AsSpan(random.Next(trainTokens.Length - window + 1), window).ToArray()).ToList();
            var (loss, accuracy) = NextTokenLoss(model, batch);
            return (loss, accuracy, options.BatchSize * options.ContextLength);
        }, validWindows.Count == 0 ? null : () => (lastValid = Validate(model, validWindows, options.BatchSize)).Value, progress, cancel);

        ModelFolder.Save(model, folder);
        return new LanguageModelPretrainingResult(config, FortunesCorpus.Files(options.CorpusFolder).Count(), train.Count, valid.Count,
            entries.Sum(e => (long)System.Text.Encoding.UTF8.GetByteCount(e)), trainTokens.Length, validTokens.Length, options.Steps, options.BatchSize,
            last.Loss, lastValid?.Loss ?? double.NaN, clock.Elapsed.TotalSeconds);
    }

    /// <summary>The entries as one token stream, each after an end-of-text token.</summary>
    static int[] Stream(HfTokenizer tokenizer, IEnumerable<string> entries)
    {
        int end = tokenizer.SpecialTokens[EndOfText];
        return entries.SelectMany(e => tokenizer.Encode(e + "\n").Prepend(end)).ToArray();
    }

    /// <summary>Mean cross-entropy of predicting each window's tokens 1..n from 0..n-1, and how often the top prediction is right.</summary>
    static (Tensor Loss, Tensor Accuracy) NextTokenLoss(LlamaForCausalLM model, IReadOnlyList<int[]> windows)
    {
        var ids = tensor(windows.SelectMany(w => w).Select(t => (long)t).ToArray()).view(windows.Count, -1);   // [b, n+1]
        var inputs = ids[.., ..^1];
        var targets = ids[.., 1..].reshape(-1);
        var logits = model.forward(inputs);                                                                       // [b, n, vocab]
        logits = logits.reshape(-1, logits.shape[^1]);
        return (nn.functional.cross_entropy(logits, targets), logits.argmax(-1).eq(targets).to_type(ScalarType.Float32).mean());
    }

    static (double Loss, double Accuracy) Validate(LlamaForCausalLM model, List<int[]> windows, int batchSize)
    {
        double loss = 0, accuracy = 0;
        foreach (var chunk in windows.Chunk(batchSize))
        {
            using var scope = NewDisposeScope();
            var (l, a) = NextTokenLoss(model, chunk);
            loss += l.item<float>() * chunk.Length;
            accuracy += a.item<float>() * chunk.Length;
        }
        return (loss / windows.Count, accuracy / windows.Count);
    }
}
