namespace AdapterService.Core.Jobs;

/// <summary>
/// A training step's numbers, as pushed to SignalR clients (<c>progress</c>) and stored in metrics events;
/// <see cref="ValidLoss"/> is set at the end of each epoch when the job has a validation file.
/// </summary>
public sealed record ProgressMessage(
    string JobId, int Step, int TotalSteps, int Epoch, double TrainLoss, double LearningRate, double TokensPerSecond, double EtaSeconds,
    double? ValidLoss = null);

/// <summary>A job's new status (<c>status</c> message); error set when it failed.</summary>
public sealed record StatusMessage(string JobId, string Status, string? FineTunedModel, string? Error);

/// <summary>Relays job events, already persisted, to whoever watches live (the API's SignalR hub).</summary>
public interface IJobNotifier
{
    Task ProgressAsync(ProgressMessage message);
    Task StatusAsync(StatusMessage message);
}
