using AdapterService.Core.Formats;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using AdapterService.Core.Training;
using AdapterService.Core.Vision;
using Hangfire;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace AdapterService.Workers;

/// <summary>
/// Pre-trains the built-in ViT (<see cref="Id"/>) on Fashion-MNIST classes 0-4 from Debian's package, writes it to the blob
/// store as a Hugging Face folder and registers it as a base model, with what it was trained on in its description.
/// Queued like a fine-tuning job (one at a time per worker); a second run after it succeeded is a no-op.
/// </summary>
public sealed class VitPretrainingJob(ServiceDbContext db, IBlobStore blobs, IOptions<PretrainingOptions> options, FusionHost trainings, ILogger<VitPretrainingJob> log)
{
    public const string Id = "vit-fashion-mnist-demo";

    /// <summary>Progress is logged this often (in steps).</summary>
    const int LogEverySteps = 50;

    public static bool IsRegistered(ServiceDbContext db) => db.BaseModels.Any(m => m.Id == Id);

    [AutomaticRetry(Attempts = 0), Queue(WorkerServices.FineTuningQueue)]
    public void Run(CancellationToken shutdown)
    {
        if (IsRegistered(db)) return;
        var o = options.Value;
        log.LogInformation("Pre-training {Model}: {Steps} steps of batch {Batch} on up to {Images} Fashion-MNIST images of classes 0-4 from {Folder}",
            Id, o.Steps, o.BatchSize, o.TrainImages, o.DataFolder);
        var blobPath = BlobPaths.ModelPath(Id);
        // In a training slot of its own, like a fine-tuning job that does not fuse.
        var result = trainings.RunAlone(() => VitPretraining.CreateFolder(blobs.Resolve(blobPath), blobs.NewTempFolder(), o, p =>
        {
            if (p.Step % LogEverySteps == 0 || p.Step == p.TotalSteps)
                log.LogInformation("Pre-training {Model}: step {Step}/{Total}, loss {Loss:0.0000}, batch accuracy {Accuracy:P1}, {Eta:0}s left",
                    Id, p.Step, p.TotalSteps, p.Loss, p.Accuracy, p.EtaSeconds);
        }, shutdown), () => true, shutdown);
        log.LogInformation("Pre-trained {Model} in {Seconds:0}s: accuracy {Accuracy:P1} on {Images} test images of classes 0-4",
            Id, result.Seconds, result.TestAccuracy, result.TestImages);
        var config = VitPretraining.DemoConfig;
        var (tensors, _) = SafeTensors.ReadHeader(Path.Combine(blobs.Resolve(blobPath), ModelFolder.WeightsFile));
        db.BaseModels.Add(new BaseModel
        {
            Id = Id, Family = config.ModelType, Description = result.Describe(), BlobPath = blobPath,
            ParameterCount = tensors.Sum(t => t.Shape.Aggregate(1L, (a, b) => a * b)), ContextLength = config.NumPatches + 1,
            Dtype = config.TorchDtype, Tokenizer = "none (28×28 grayscale images)", CreatedAt = DateTimeOffset.UtcNow.ToUnixTimeSeconds(),
        });
        db.SaveChanges();
    }
}
