namespace AdapterService.Core.Jobs;

/// <summary>
/// Fair turns between projects where the workers take fine-tuning jobs off the queue. The queue is first in, first
/// out across projects: a project that queued twenty jobs would have every worker (and every place in a fused group)
/// before another project's job, queued a moment later, got one. So a job a worker takes lets another project go
/// first when that project has a job waiting and fewer jobs running: the job goes back to the end of the queue, and
/// the worker takes the next. The project with the fewest running jobs never waits, so the queue always moves.
/// </summary>
public static class FairTurns
{
    /// <summary>How often one job lets others go first in a row before it runs anyway (a job queued but never delivered cannot hold others forever).</summary>
    public const int MaxDeferrals = 100;

    /// <summary>
    /// Whether a queued job of <paramref name="project"/> should go back to the queue: another project with a job
    /// <paramref name="waiting"/> has fewer <paramref name="running"/> jobs (jobs a worker holds, training or waiting
    /// for a place to train).
    /// </summary>
    public static bool ShouldDefer(string project, IReadOnlyDictionary<string, int> running, IEnumerable<string> waiting)
    {
        int mine = running.GetValueOrDefault(project);
        return waiting.Any(other => other != project && running.GetValueOrDefault(other) < mine);
    }
}
