using AdapterService.Core.Training;

namespace AdapterService.Workers;

/// <summary><c>Workers:StateEverySteps</c>: how often a job saves the state it resumes from after a crash (also at every epoch's end).</summary>
public sealed class TrainingOptions
{
    public int StateEverySteps { get; set; } = 25;
    /// <summary><c>Workers:LeaseSeconds</c>: how long a job stays claimed by a worker that stopped renewing it.</summary>
    public int LeaseSeconds { get; set; } = 60;
    /// <summary><c>Workers:Speed</c>: how language-model jobs compute their steps (packing, micro-batches, bf16, checkpointing).</summary>
    public TrainingSpeedOptions Speed { get; set; } = new();
}
