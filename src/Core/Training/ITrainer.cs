namespace AdapterService.Core.Training;

/// <summary>What a fine-tuning job's runner needs of a trainer, whatever it trains (a language model, an image classifier).</summary>
public interface ITrainer : IDisposable
{
    int StepsPerEpoch { get; }
    int TotalSteps { get; }
    int Step { get; }

    /// <summary>Trains from <see cref="Step"/> to the end; <paramref name="onStep"/> runs after each step, outside its dispose scope.</summary>
    TrainingResult Run(Action<TrainingProgress> onStep, CancellationToken cancel);

    /// <summary>Ends <see cref="Run"/> after the step in progress, as finished (early stopping).</summary>
    void StopAfterThisStep();

    void SaveState(string folder);
    void LoadState(string folder);
}
