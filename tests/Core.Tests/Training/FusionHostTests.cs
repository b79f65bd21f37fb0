using System.Collections.Concurrent;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using AdapterService.Core.Training;
using static AdapterService.Core.Tests.TinyLlama;

namespace AdapterService.Core.Tests.Training;

public sealed class FusionHostTests
{
    public FusionHostTests() => TorchRuntime.EnsureReady();

    static List<TokenizedExample> Examples(int job) => Enumerable.Range(0, 4).Select(i =>
    {
        var (ids, train) = ModelText.BuiltIn.EncodeExample(new CompletionExample(i, $"q{job}.{i}:", $"a{job}"), null)[0];
        return new TokenizedExample([.. ids], [.. train]);
    }).ToList();

    /// <summary>Trains job <paramref name="job"/> through the host; records, per step, how many others shared it.</summary>
    static TrainingResult Train(FusionHost host, int job, ConcurrentBag<int> others, ConcurrentBag<CausalLanguageModel> models, CancellationToken cancel,
        Func<bool>? waiting = null, Action<TrainingProgress>? onStep = null) =>
        host.Train("tiny", () => Create(), new Session(job, others, models, waiting, onStep), cancel);

    sealed class Session(int job, ConcurrentBag<int> others, ConcurrentBag<CausalLanguageModel> models, Func<bool>? waiting, Action<TrainingProgress>? onStep)
        : IFusedSession
    {
        public FusableTrainer Join(CausalLanguageModel model)
        {
            models.Add(model);
            var adapter = TrainableAdapter.Create(model, new LoraConfig { Rank = 2, Alpha = 4, TargetModules = ["q_proj"] }, seed: job);
            return new LanguageModelTrainer(model, adapter, Examples(job), new Hyperparameters(3, 2, 0.01), ByteTokenizer.End, job);
        }

        public void AfterStep(TrainingProgress progress, int fusedWith)
        {
            others.Add(fusedWith);
            onStep?.Invoke(progress);
        }

        public bool ShouldContinue() => waiting?.Invoke() ?? true;
    }

    [Fact]
    public void JobsOnOneBaseTrainTogetherUpToTheCapAndEachFinishesWithItsOwnResult()
    {
        var host = new FusionHost(maxFusedJobs: 2, concurrency: 1);
        var others = new ConcurrentBag<int>();
        var models = new ConcurrentBag<CausalLanguageModel>();
        using var gate = new ManualResetEventSlim();
        // Job 0 holds its first step until all three jobs have asked to train, so the others find its group running.
        var results = new TrainingResult?[3];
        var threads = Enumerable.Range(0, 3).Select(j => new Thread(() =>
            results[j] = Train(host, j, others, models, CancellationToken.None, onStep: _ => { if (j == 0) gate.Wait(TimeSpan.FromSeconds(30)); }))).ToList();
        threads.ForEach(t => t.Start());
        Thread.Sleep(500);
        gate.Set();
        threads.ForEach(t => t.Join());

        Assert.All(results, r => Assert.Equal(6, r!.Steps));
        Assert.Contains(1, others);                    // two jobs shared steps...
        Assert.All(others, n => Assert.True(n <= 1));  // ...never three (the cap); the third waited for a place
    }

    sealed class FailingSession : IFusedSession
    {
        public FusableTrainer Join(CausalLanguageModel model) => throw new InvalidDataException("this member cannot start");
        public void AfterStep(TrainingProgress progress, int fusedWith) { }
        public bool ShouldContinue() => true;
    }

    /// <summary>
    /// A sweep's members (<see cref="FusionHost.TrainTogether"/>) train in one group over one model, every step shared by
    /// all of them, even with fusion off for separate jobs (MaxFusedJobs 1); a member that fails does so alone.
    /// </summary>
    [Fact]
    public void ASweepsMembersTrainTogetherOverOneModelAndOneFailingFailsAlone()
    {
        var host = new FusionHost(maxFusedJobs: 1, concurrency: 1);
        var others = new ConcurrentBag<int>();
        var models = new ConcurrentBag<CausalLanguageModel>();
        IFusedSession[] sessions = [new Session(0, others, models, null, null), new FailingSession(), new Session(2, others, models, null, null), new Session(3, others, models, null, null)];
        var outcomes = host.TrainTogether("tiny", () => Create(), sessions, () => true, CancellationToken.None);

        Assert.Single(models.Distinct());
        Assert.IsType<InvalidDataException>(outcomes[1].Error);
        foreach (int m in new[] { 0, 2, 3 })
        {
            Assert.Null(outcomes[m].Error);
            Assert.Equal(6, outcomes[m].Result!.Steps);
        }
        Assert.All(others, n => Assert.Equal(2, n));   // every step of the three that started shared by all three
        Assert.Equal(18, others.Count);
    }

    [Fact]
    public void AJobWaitingForASlotGivesUpWhenItsWaitingCheckSaysSo()
    {
        var host = new FusionHost(maxFusedJobs: 1, concurrency: 1);   // no fusion, one training at a time
        var others = new ConcurrentBag<int>();
        var models = new ConcurrentBag<CausalLanguageModel>();
        using var release = new ManualResetEventSlim();
        var first = new Thread(() => Train(host, 0, others, models, CancellationToken.None, onStep: _ => release.Wait(TimeSpan.FromSeconds(30))));
        first.Start();
        while (models.IsEmpty) Thread.Sleep(10);

        int checks = 0;
        Assert.ThrowsAny<OperationCanceledException>(() => Train(host, 1, others, models, CancellationToken.None, waiting: () => ++checks < 2));
        Assert.Equal(2, checks);
        release.Set();
        first.Join();
        Assert.All(others, n => Assert.Equal(0, n));
    }

    [Fact]
    public void ACancelledJobLeavesWithACancellationAndTheOtherFinishes()
    {
        var host = new FusionHost(maxFusedJobs: 4, concurrency: 1);
        var others = new ConcurrentBag<int>();
        var models = new ConcurrentBag<CausalLanguageModel>();
        using var cancel = new CancellationTokenSource();
        TrainingResult? kept = null;
        Exception? cancelled = null;
        var a = new Thread(() => kept = Train(host, 0, others, models, CancellationToken.None));
        var b = new Thread(() =>
        {
            try { Train(host, 1, others, models, cancel.Token, onStep: p => { if (p.Step == 1) cancel.Cancel(); }); }
            catch (Exception e) { cancelled = e; }
        });
        a.Start();
        b.Start();
        a.Join();
        b.Join();
        Assert.Equal(6, kept!.Steps);
        Assert.IsAssignableFrom<OperationCanceledException>(cancelled);
    }
}
