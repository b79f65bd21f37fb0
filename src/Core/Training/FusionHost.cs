using AdapterService.Core.Adapters;
using AdapterService.Core.Models;

namespace AdapterService.Core.Training;

/// <summary>
/// A job's run as a fused group drives it, on the group's thread: <see cref="Join"/> when it enters the group,
/// <see cref="AfterStep"/> after each of its steps. Until it is in a group, the job's own thread asks
/// <see cref="ShouldContinue"/> about once a second whether to keep waiting.
/// </summary>
public interface IFusedSession
{
    /// <summary>Makes the job's trainer over the group's copy of the base (its adapter attached to <paramref name="model"/>).</summary>
    FusableTrainer Join(CausalLanguageModel model);

    /// <summary>What follows one of the job's steps; <paramref name="fusedWith"/>: how many other jobs shared the step.</summary>
    void AfterStep(TrainingProgress progress, int fusedWith);

    /// <summary>Whether a job still waiting for a place (a slot, or a group to join) keeps waiting.</summary>
    bool ShouldContinue();
}

/// <summary>
/// Trains the jobs of one process: language-model jobs on the same base fuse into a group that trains them together
/// over one copy of the base (<see cref="FusedTrainer"/>), at most <see cref="MaxFusedJobs"/> at a time; at most
/// <c>concurrency</c> groups and unfused trainings run at once, each using every core.
/// </summary>
/// <remarks>
/// Each group has a thread of its own that loads the base, steps its members and calls their sessions
/// (<see cref="IFusedSession"/>); every TorchSharp call on the group's model happens there. A job's own thread (a Hangfire worker) waits in
/// <see cref="Train"/> for its member to finish, fail or be cancelled, then records the outcome itself. Jobs join and
/// leave between steps; one leaving, failing or being cancelled never stops the others. A group ends, and frees its model,
/// when its last member leaves.
/// </remarks>
public sealed class FusionHost(int maxFusedJobs, int concurrency, double checkpointShare = FusedTrainer.DefaultCheckpointShare)
{
    readonly object gate = new();
    readonly List<Group> groups = [];
    int running;   // groups and unfused trainings, each holding one of the concurrency slots

    /// <summary>How many jobs one group trains at most (1: none fuse).</summary>
    public int MaxFusedJobs { get; } = Math.Max(1, maxFusedJobs);

    /// <summary>How many groups and unfused trainings run at once.</summary>
    public int Concurrency { get; } = Math.Max(1, concurrency);

    /// <summary>The share of decoder layers a fused step recomputes in its backward pass instead of keeping their activations (<see cref="FusedTrainer.Step"/>).</summary>
    public double CheckpointShare { get; } = checkpointShare is >= 0 and <= 1
        ? checkpointShare : throw new ArgumentOutOfRangeException(nameof(checkpointShare), "Workers:FusedCheckpointing is a share of the layers, from 0 to 1");

    /// <summary>
    /// Trains a job's <paramref name="session"/> in a group over the base <paramref name="baseKey"/>, joining one with
    /// room or starting one (which loads the base with <paramref name="load"/>) when a slot is free. Blocks until the
    /// job's run ends; throws what ended it (an <see cref="OperationCanceledException"/> when <paramref name="cancel"/>
    /// stopped it, or the session gave up waiting).
    /// </summary>
    public TrainingResult Train(string baseKey, Func<CausalLanguageModel> load, IFusedSession session, CancellationToken cancel)
    {
        var joiner = new Joiner(session, cancel);
        WaitFor(() =>
        {
            if (groups.FirstOrDefault(g => g.Key == baseKey && g.Size < MaxFusedJobs) is { } group)
            {
                group.Joining.Add(joiner);
                return true;
            }
            if (running >= Concurrency) return false;
            running++;
            group = new Group(this, baseKey, load);
            group.Joining.Add(joiner);
            groups.Add(group);
            group.Start();
            return true;
        }, session.ShouldContinue, cancel);
        return joiner.Done.Task.GetAwaiter().GetResult();
    }

    /// <summary>
    /// Trains the members of one job (a sweep's, <see cref="Jobs.Sweep"/>) in one group over one copy of the base: they
    /// join a group with room for all of them at once, or start one (a sweep larger than <see cref="MaxFusedJobs"/> gets a
    /// group of its own). Blocks until every member's run ended and returns each one's result or the error that ended it;
    /// one member failing never stops the others. <paramref name="waiting"/> is asked while they wait for a place.
    /// </summary>
    public IReadOnlyList<(TrainingResult? Result, Exception? Error)> TrainTogether(string baseKey, Func<CausalLanguageModel> load,
        IReadOnlyList<IFusedSession> sessions, Func<bool> waiting, CancellationToken cancel)
    {
        var joiners = sessions.Select(s => new Joiner(s, cancel)).ToList();
        WaitFor(() =>
        {
            if (groups.FirstOrDefault(g => g.Key == baseKey && g.Size + joiners.Count <= MaxFusedJobs) is not { } group)
            {
                if (running >= Concurrency) return false;
                running++;
                group = new Group(this, baseKey, load);
                groups.Add(group);
                group.Joining.AddRange(joiners);
                group.Start();
                return true;
            }
            group.Joining.AddRange(joiners);
            return true;
        }, waiting, cancel);
        return joiners.Select(j =>
        {
            try
            {
                return (j.Done.Task.GetAwaiter().GetResult(), (Exception?)null);
            }
            catch (Exception e)
            {
                return ((TrainingResult?)null, e);
            }
        }).ToList();
    }

    /// <summary>Runs a training that does not fuse (an image classifier's, or with fusion off) in a slot of its own.</summary>
    public T RunAlone<T>(Func<T> train, Func<bool> waiting, CancellationToken cancel)
    {
        WaitFor(() =>
        {
            if (running >= Concurrency) return false;
            running++;
            return true;
        }, waiting, cancel);
        try
        {
            return train();
        }
        finally
        {
            Release();
        }
    }

    /// <summary>Waits until <paramref name="enter"/> (run under the lock) succeeds.</summary>
    void WaitFor(Func<bool> enter, Func<bool> waiting, CancellationToken cancel)
    {
        while (true)
        {
            cancel.ThrowIfCancellationRequested();
            lock (gate)
            {
                if (enter()) return;
                Monitor.Wait(gate, TimeSpan.FromSeconds(1));
                if (enter()) return;
            }
            if (!waiting()) throw new OperationCanceledException("the job stopped while waiting for a turn to train");
        }
    }

    void Release()
    {
        lock (gate)
        {
            running--;
            Monitor.PulseAll(gate);
        }
    }

    sealed class Joiner(IFusedSession session, CancellationToken cancel)
    {
        public IFusedSession Session { get; } = session;
        public CancellationToken Cancel { get; } = cancel;
        public TaskCompletionSource<TrainingResult> Done { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        /// <summary>Set once the job joined the group.</summary>
        public FusableTrainer? Trainer { get; set; }
    }

    sealed class Group(FusionHost host, string key, Func<CausalLanguageModel> load)
    {
        public string Key { get; } = key;
        /// <summary>Waiting to join at the next step (changed under the host's lock).</summary>
        public List<Joiner> Joining { get; } = [];
        /// <summary>Training (changed under the host's lock).</summary>
        readonly List<Joiner> members = [];
        /// <summary>Taken from <see cref="Joining"/>, being made on the group's thread (they count until they are members).</summary>
        int starting;
        public int Size => Joining.Count + starting + members.Count;

        public void Start() => new Thread(Drive) { IsBackground = true, Name = $"fused training on {Key}" }.Start();

        void Drive()
        {
            CausalLanguageModel? model = null;
            try
            {
                model = load();
                while (true)
                {
                    List<Joiner> joining;
                    lock (host.gate)
                    {
                        joining = [.. Joining];
                        starting = joining.Count;
                        Joining.Clear();
                        if (joining.Count == 0 && members.Count == 0)
                        {
                            host.groups.Remove(this);   // under the lock: no one joins a group that has ended
                            break;
                        }
                    }
                    foreach (var joiner in joining) Join(joiner, model);
                    foreach (var member in members.ToList())
                        if (member.Cancel.IsCancellationRequested) Leave(member, new OperationCanceledException(member.Cancel));
                        else if (member.Trainer!.Finished) Leave(member, null);
                    if (members.Count == 0) continue;

                    var stepping = members.ToList();
                    var outcomes = FusedTrainer.Step(model, stepping.Select(m => m.Trainer!).ToList(), host.CheckpointShare);
                    foreach (var (member, outcome) in stepping.Zip(outcomes))
                    {
                        if (outcome.Error is not null) Leave(member, outcome.Error);
                        else
                            try
                            {
                                member.Session.AfterStep(outcome.Progress!, stepping.Count - 1);
                            }
                            catch (Exception e)
                            {
                                Leave(member, e);
                            }
                    }
                }
            }
            catch (Exception e)
            {
                // Loading the base or the fused step itself failed: every job of the group fails with it.
                lock (host.gate)
                {
                    host.groups.Remove(this);
                    foreach (var joiner in Joining) joiner.Done.TrySetException(e);
                    Joining.Clear();
                }
                foreach (var member in members.ToList()) Leave(member, e);
            }
            finally
            {
                model?.Dispose();
                host.Release();
            }
        }

        void Join(Joiner joiner, CausalLanguageModel model)
        {
            try
            {
                joiner.Trainer = joiner.Session.Join(model);
                joiner.Trainer.BeginRun();
                lock (host.gate)
                {
                    members.Add(joiner);
                    starting--;
                }
            }
            catch (Exception e)
            {
                TrainableAdapter.Detach(model);   // a trainer that failed half-made may have attached its adapter
                joiner.Done.TrySetException(e);
                lock (host.gate)
                {
                    starting--;
                    Monitor.PulseAll(host.gate);
                }
            }
        }

        /// <summary>Takes the job out of the group (before the next step) and hands its outcome to its thread.</summary>
        void Leave(Joiner member, Exception? error)
        {
            try
            {
                member.Trainer?.EndRun();
            }
            finally
            {
                lock (host.gate)
                {
                    members.Remove(member);
                    Monitor.PulseAll(host.gate);   // room for a waiting job
                }
                if (error is null) member.Done.TrySetResult(member.Trainer!.Result);
                else member.Done.TrySetException(error);
            }
        }
    }
}
