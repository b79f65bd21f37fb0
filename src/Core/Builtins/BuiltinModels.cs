using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Text;
using Microsoft.EntityFrameworkCore;
using static TorchSharp.torch;

namespace AdapterService.Core.Builtins;

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

    /// <summary>Writes the model's folder as <paramref name="blobPath"/> if it is not there yet (deterministic: the same seed gives the same bytes).</summary>
    public static void EnsureCreated(Builtin builtin, IBlobStore blobs, string blobPath)
    {
        string weights = $"{blobPath}/{ModelFolder.WeightsFile}";
        if (blobs.Exists(weights)) return;
        using var scope = NewDisposeScope();
        using var model = RandomModel.Create(builtin.Config, builtin.Seed);
        // Written aside and published whole, so a crash never leaves a half-written base model behind.
        string temp = blobs.NewTempFolder();
        ModelFolder.Save(model, temp);
        ByteTokenizer.Save(temp);
        try
        {
            blobs.CommitFolder(temp, blobPath, replace: true);   // replaces a folder left without its weights
        }
        catch (IOException) when (blobs.Exists(weights))
        {
            Directory.Delete(temp, true);   // another process made it first: same seed, same bytes
        }
    }

    /// <summary>Makes sure each built-in base exists: its folder in the blob store and its row (created on first start).</summary>
    public static void Register(ServiceDbContext db, IBlobStore blobs)
    {
        foreach (var builtin in All)
        {
            var blobPath = BlobPaths.ModelPath(builtin.Id);
            EnsureCreated(builtin, blobs, blobPath);
            if (db.BaseModels.Any(m => m.Id == builtin.Id)) continue;
            var c = builtin.Config;
            var (tensors, _) = SafeTensors.ReadHeader(Path.Combine(blobs.Resolve(blobPath), ModelFolder.WeightsFile));
            db.BaseModels.Add(new BaseModel
            {
                Id = builtin.Id, Family = "llama", Description = builtin.Description, BlobPath = blobPath,
                ParameterCount = tensors.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b)), ContextLength = c.MaxPositionEmbeddings, Dtype = c.TorchDtype,
                Tokenizer = "byte-level", CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
            });
        }
        try
        {
            db.SaveChanges();
        }
        catch (DbUpdateException) when (db.BaseModels.AsNoTracking().Count() >= All.Count)
        {
            // Another process (API or worker) registered the built-in models at the same moment.
        }
        db.ChangeTracker.Clear();
    }
}
