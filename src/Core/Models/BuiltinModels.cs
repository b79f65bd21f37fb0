using AdapterService.Core.Formats;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Models;

/// <summary>Base models the service makes itself, so it works with nothing downloaded.</summary>
public static class BuiltinModels
{
    public sealed record Builtin(string Id, string Description, LlamaConfig Config, long Seed);

    /// <summary>
    /// A tiny byte-level Llama with random weights (seeded): a demo base for trying the service end to end.
    /// It writes no meaningful text of its own; adapters fine-tuned on it learn what their data shows.
    /// </summary>
    public static readonly Builtin TinyDemo = new(
        "tiny-llama-demo",
        "Tiny demo model: byte-level Llama-style transformer (4 layers, hidden 128) with random weights from a fixed seed. Not a language model; fine-tune it to see adapters learn.",
        new LlamaConfig
        {
            VocabSize = ByteTokenizer.VocabSize, HiddenSize = 128, IntermediateSize = 352, NumHiddenLayers = 4,
            NumAttentionHeads = 4, NumKeyValueHeads = 2, MaxPositionEmbeddings = 512,
            BosTokenId = ByteTokenizer.Begin, EosTokenId = ByteTokenizer.End,
        },
        Seed: 20261123);

    public static IReadOnlyList<Builtin> All { get; } = [TinyDemo];

    /// <summary>A frozen model with random weights drawn from <paramref name="seed"/>: the same seed gives the same weights.</summary>
    public static LlamaForCausalLM RandomModel(LlamaConfig config, long seed) => (LlamaForCausalLM)RandomModel((ModelConfig)config, seed);

    /// <summary>
    /// A frozen model of any family (e.g. <see cref="VitConfig.Base16(int)"/>) with random weights drawn from <paramref name="seed"/>:
    /// norms start as the identity, biases at zero, embeddings N(0, 1), and every other weight N(0, 1/fan_in).
    /// </summary>
    public static nn.Module<Tensor, Tensor> RandomModel(ModelConfig config, long seed)
    {
        var model = config.CreateModel();
        // By name: TorchSharp may hand out a new wrapper (and handle) for the same parameter on each call.
        var norms = model.NormLayers().Select(n => n.Path + ".weight").ToHashSet();
        var embeddings = model.named_modules().Where(m => m.module is TorchSharp.Modules.Embedding).Select(m => m.name + ".weight").ToHashSet();
        using var generator = new Generator().manual_seed(seed);
        using (no_grad())
        using (NewDisposeScope())
            foreach (var (name, p) in model.named_parameters())
            {
                if (p.dim() == 1) p.fill_(norms.Contains(name) ? 1 : 0);
                else if (embeddings.Contains(name) || name.EndsWith(".cls_token", StringComparison.Ordinal)
                         || name.EndsWith(".position_embeddings", StringComparison.Ordinal)) p.normal_(0, 1, generator);
                // Unit-variance activations through each linear layer; this keeps logits of a random model O(1).
                else p.normal_(0, 1 / Math.Sqrt(p.numel() / p.shape[0]), generator);
            }
        foreach (var p in model.parameters()) p.requires_grad = false;
        model.eval();
        return model;
    }

    /// <summary>Writes the model's folder if it is not there yet (deterministic: the same seed gives the same bytes).</summary>
    public static void EnsureCreated(Builtin builtin, string folder)
    {
        if (File.Exists(Path.Combine(folder, ModelFolder.WeightsFile))) return;
        using var scope = NewDisposeScope();
        using var model = RandomModel(builtin.Config, builtin.Seed);
        // Write to a temporary folder and rename, so a crash never leaves a half-written base model behind.
        string temp = folder + ".tmp-" + Guid.NewGuid().ToString("N");
        ModelFolder.Save(model, temp);
        ByteTokenizer.Save(temp);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(folder))!);
        if (Directory.Exists(folder) && !File.Exists(Path.Combine(folder, ModelFolder.WeightsFile))) Directory.Delete(folder, true);
        try
        {
            Directory.Move(temp, folder);
        }
        catch (IOException) when (File.Exists(Path.Combine(folder, ModelFolder.WeightsFile)))
        {
            Directory.Delete(temp, true);   // another process made it first: same seed, same bytes
        }
    }
}
