namespace AdapterService.Core.Training;

/// <summary>
/// How a language-model trainer computes its steps, not what it learns: each option changes speed, memory or rounding
/// only, so a job's result is the same (to rounding) whichever are on. Worker settings <c>Workers:Speed:*</c> (docs/API.md).
/// The precision of the frozen base is not here but in <see cref="Models.BasePrecision"/> (<c>Models:Precision</c>), which
/// serving shares.
/// </summary>
public sealed record TrainingSpeedOptions
{
    /// <summary>
    /// Packs several short examples of a batch into one row (block-diagonal causal mask, positions restarting per example),
    /// so padding is not computed. Exact for adapters whose tokens do not interact (<see cref="Adapters.TrainableAdapter.TokenWise"/>);
    /// other adapters train on padded rows whatever this says.
    /// </summary>
    public bool Packing { get; init; } = true;

    /// <summary>
    /// Examples per micro-batch: a batch larger than this is computed in several forward/backward passes whose gradients
    /// add up before the one optimizer step (gradient accumulation); null computes the whole batch at once.
    /// </summary>
    public int? MicroBatchSize { get; init; }

    /// <summary>
    /// Keeps only each decoder layer's input in the forward pass and recomputes the layer in the backward pass: less memory
    /// for about one more forward pass. Applies to adapters whose tokens do not interact; others train without it.
    /// </summary>
    public bool GradientCheckpointing { get; init; }

    /// <summary>Why the options are invalid, or null.</summary>
    public string? Problem() => MicroBatchSize is < 1 ? "MicroBatchSize must be at least 1" : null;
}
