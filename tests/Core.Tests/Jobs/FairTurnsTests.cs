using AdapterService.Core.Jobs;

namespace AdapterService.Core.Tests.Jobs;

/// <summary>
/// <see cref="FairTurns"/> as the workers apply it: a first-in-first-out queue, workers that take its head, and a job
/// that goes back to the end when another project waits with fewer jobs running. Deterministic: places free one at a time.
/// </summary>
public class FairTurnsTests
{
    /// <summary>The order in which jobs start, for <paramref name="queued"/> (project names, oldest first) and <paramref name="places"/> jobs running at once.</summary>
    static List<(string Project, int Index)> StartOrder(IEnumerable<string> queued, int places, bool fair)
    {
        var queue = new LinkedList<(string Project, int Index)>(queued.Select((p, i) => (p, i)));
        var running = new Queue<(string Project, int Index)>();
        var started = new List<(string, int)>();
        int takes = 0;
        while (queue.Count > 0)
        {
            while (running.Count < places && queue.Count > 0)
            {
                Assert.True(++takes < 10_000, "the queue stopped moving");
                var job = queue.First!.Value;
                queue.RemoveFirst();
                var counts = running.GroupBy(r => r.Project).ToDictionary(g => g.Key, g => g.Count());
                if (fair && FairTurns.ShouldDefer(job.Project, counts, queue.Select(q => q.Project)))
                {
                    queue.AddLast(job);   // back to the end of the queue
                    continue;
                }
                running.Enqueue(job);
                started.Add(job);
            }
            running.Dequeue();   // the oldest running job finishes
        }
        return started;
    }

    [Fact]
    public void AProjectWithManyQueuedJobsDoesNotStarveAnother()
    {
        // a queues 12 jobs, then b queues one; two jobs train at once.
        var queued = Enumerable.Repeat("a", 12).Append("b").ToList();
        var fifo = StartOrder(queued, places: 2, fair: false);
        Assert.Equal(12, fifo.FindIndex(j => j.Project == "b"));   // first in, first out: b waits for all of a's
        var fair = StartOrder(queued, places: 2, fair: true);
        Assert.Equal(1, fair.FindIndex(j => j.Project == "b"));    // b takes the next place, before a's second job
        Assert.Equal(13, fair.Count);                               // every job runs
        // a's own jobs keep their order among themselves.
        Assert.Equal(Enumerable.Range(0, 12), fair.Where(j => j.Project == "a").Select(j => j.Index));
    }

    [Fact]
    public void TwoFloodingProjectsTakeTurnsAndOneAloneTakesEveryPlace()
    {
        var queued = Enumerable.Repeat("a", 8).Concat(Enumerable.Repeat("b", 8)).ToList();
        var fair = StartOrder(queued, places: 2, fair: true);
        Assert.Equal(16, fair.Count);
        // Once b's jobs are in the running, neither project is more than one start ahead of the other.
        var projects = fair.Select(j => j.Project).ToList();
        for (int n = 2; n <= 16; n++)
            Assert.InRange(projects.Take(n).Count(p => p == "a") - projects.Take(n).Count(p => p == "b"), -1, 1);
        // With nobody else waiting, a project is never held back.
        Assert.False(FairTurns.ShouldDefer("a", new Dictionary<string, int> { ["a"] = 5 }, ["a", "a"]));
        Assert.True(FairTurns.ShouldDefer("a", new Dictionary<string, int> { ["a"] = 1 }, ["b"]));
        Assert.False(FairTurns.ShouldDefer("a", new Dictionary<string, int> { ["a"] = 1, ["b"] = 1 }, ["b"]));
    }
}
