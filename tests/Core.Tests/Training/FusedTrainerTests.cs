using AdapterService.Core.Adapters;
using System.Text.Json;
using AdapterService.Core.Data;
using AdapterService.Core.Grading;
using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using AdapterService.Core.Training;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Training;

public sealed class FusedTrainerTests
{
    public FusedTrainerTests() => TorchRuntime.EnsureReady();

    /// <summary>
    /// A fused job may differ from the job alone only by float rounding: the base's matmuls run over a batch of another
    /// shape (more rows, padded to the longest job), which can change the summation order inside a GEMM (~1e-7 relative
    /// per op). LoRA, DoRA, RLRR and MixLoRA weights come out within ~3e-7 of alone. AdamW divides each gradient by its
    /// own running RMS, so a parameter whose gradient is almost all cancellation carries the rounding further: Lily's
    /// router (logits nearly equal, experts starting at zero) differs by up to ~1e-4, flat over epochs (measured over
    /// 1, 2 and 4 epochs, both router means, with and without dropout), so its tolerance is 5e-4. With packed rows (the
    /// default) RLRR's vectors go the same way: its s_left starts at zero, so early gradients of s_right and f are
    /// cancellation too, and the last layer's o_proj vectors differed by up to 6e-4 (the rest by ≤ 5e-5); they get 1e-3.
    /// The same RLRR job alone with packed vs padded rows differs by as much on the same vectors (5.9e-4): rounding, not fusion. All lie far below what a
    /// real mistake costs (a wrong dropout mask, another job's rows, a shared optimizer): one AdamW step here moves a
    /// weight by up to the learning rate, 5e-3 to 2e-2.
    /// </summary>
    const double Tolerance = 1e-4, RouterTolerance = 5e-4, RlrrTolerance = 1e-3;

    static List<TokenizedExample> Examples(int job, int count) => Enumerable.Range(0, count).Select(i =>
    {
        // Lengths differ within a job and between jobs, so batches are padded and the fused batch is padded again.
        var prompt = new string('x', (i * 3 + job * 5) % 11) + $"q{job}.{i}:";
        var (ids, train) = ModelText.BuiltIn.EncodeExample(new CompletionExample(i, prompt, $"answer {job}"), null)[0];
        return new TokenizedExample([.. ids], [.. train]);
    }).ToList();

    sealed record Job(AdapterConfig Config, int Examples, Hyperparameters Hp, long Seed);

    static readonly Job[] LoraJobs =
    [
        new(new LoraConfig { Rank = 4, Alpha = 8, Dropout = 0.1, TargetModules = ["all-linear"] }, 6, new(3, 2, 0.01), 1),
        new(new LoraConfig { Rank = 2, Alpha = 4, Dropout = 0.0, TargetModules = ["q_proj", "v_proj"] }, 5, new(2, 3, 0.02), 2),
        new(new LoraConfig { Rank = 8, Alpha = 8, Dropout = 0.2, TargetModules = ["all-linear"] }, 4, new(2, 1, 0.005), 3),
        new(new LoraConfig { Rank = 4, Alpha = 16, Dropout = 0.0, TargetModules = ["gate_proj", "up_proj", "down_proj"] }, 7, new(2, 4, 0.01), 4),
    ];

    static LanguageModelTrainer NewTrainer(LlamaForCausalLM model, Job job, int index, List<TrainableAdapter> adapters)
    {
        var adapter = TrainableAdapter.Create(model, job.Config, seed: job.Seed);
        adapters.Add(adapter);
        return new LanguageModelTrainer(model, adapter, Examples(index, job.Examples), job.Hp, ByteTokenizer.End, job.Seed);
    }

    /// <summary>The four LoRA jobs trained alone, computed once for the tests that compare with them.</summary>
    static readonly Lazy<List<Dictionary<string, Tensor>>> LoraAlone = new(() => Alone(LoraJobs));

    /// <summary>Each job trained alone, its adapter's parameters afterwards (kept beyond any dispose scope).</summary>
    static List<Dictionary<string, Tensor>> Alone(IReadOnlyList<Job> jobs, Func<LlamaForCausalLM>? create = null, Func<int, List<TokenizedExample>>? data = null)
    {
        using var model = (create ?? (() => Create()))();
        var result = new List<Dictionary<string, Tensor>>();
        for (int j = 0; j < jobs.Count; j++)
        {
            var adapters = new List<TrainableAdapter>();
            using var trainer = data is null ? NewTrainer(model, jobs[j], j, adapters) : new LanguageModelTrainer(model,
                adapters.AddAndReturn(TrainableAdapter.Create(model, jobs[j].Config, seed: jobs[j].Seed)), data(j), jobs[j].Hp, ByteTokenizer.End, jobs[j].Seed);
            trainer.Run(_ => { }, CancellationToken.None);
            result.Add(Weights(adapters[0]));
            TrainableAdapter.Detach(model);
        }
        return result;
    }

    /// <summary>The jobs fused over one model, each leaving when done (or when <paramref name="leave"/> says so after a step); each job's adapter and error.</summary>
    static (List<Dictionary<string, Tensor>> Parameters, Exception?[] Errors, int MostFused) Fused(IReadOnlyList<Job> jobs,
        Func<int, TrainingProgress, bool>? leave = null, Action<int, TrainableAdapter>? prepare = null, Func<int, List<TokenizedExample>>? data = null,
        Func<LlamaForCausalLM>? create = null, double checkpointShare = 0, bool failOnAlone = true)
    {
        using var model = (create ?? (() => Create()))();
        var adapters = new List<TrainableAdapter>();
        var trainers = jobs.Select((job, j) =>
        {
            var trainer = data is null ? NewTrainer(model, job, j, adapters) : new LanguageModelTrainer(model,
                adapters.AddAndReturn(TrainableAdapter.Create(model, job.Config, seed: job.Seed)), data(j), job.Hp, ByteTokenizer.End, job.Seed);
            prepare?.Invoke(j, adapters[j]);
            return trainer;
        }).ToList();
        var errors = new Exception?[jobs.Count];
        var active = Enumerable.Range(0, jobs.Count).ToList();
        foreach (var t in trainers) t.BeginRun();
        int mostFused = 0;
        while (active.Count > 0)
        {
            mostFused = Math.Max(mostFused, active.Count);
            var outcomes = FusedTrainer.Step(model, active.Select(j => trainers[j]).ToList(), checkpointShare);
            var still = new List<int>();
            if (active.Count > 1 && failOnAlone) Assert.DoesNotContain(outcomes, o => o.Alone);   // the fused pass ran (no fallback to each alone)
            foreach (var (j, outcome) in active.Zip(outcomes))
            {
                errors[j] = outcome.Error;
                bool left = outcome.Error is not null || trainers[j].Finished || leave?.Invoke(j, outcome.Progress!) == true;
                if (!left) still.Add(j);
            }
            active = still;
        }
        foreach (var t in trainers) { t.EndRun(); t.Dispose(); }
        return (adapters.Select(Weights).ToList(), errors, mostFused);
    }

    /// <summary>The adapter's parameters by key, copied (and kept beyond any dispose scope).</summary>
    static Dictionary<string, Tensor> Weights(TrainableAdapter adapter) =>
        adapter.SavedParameters().ToDictionary(p => p.Key, p => p.Value.detach().clone().DetachFromDisposeScope());

    static void AssertSame(Dictionary<string, Tensor> alone, Dictionary<string, Tensor> fused, string what)
    {
        Assert.Equal(alone.Keys.Order(), fused.Keys.Order());
        foreach (var (key, a) in alone)
        {
            double diff = (a - fused[key]).abs().max().item<float>(), tolerance = key.Contains("lily_router") ? RouterTolerance : key.Contains(".rlrr_") ? RlrrTolerance : Tolerance;
            Assert.True(diff <= tolerance, $"{what}, {key}: max |fused − alone| = {diff:G3} > {tolerance:G3}");
        }
    }

    [Fact]
    public void FourLoraJobsFusedTrainTheAdaptersTheyTrainAlone()
    {
        using var scope = NewDisposeScope();
        var alone = LoraAlone.Value;
        var (fused, errors, mostFused) = Fused(LoraJobs);
        Assert.Equal(4, mostFused);
        Assert.All(errors, Assert.Null);
        for (int j = 0; j < LoraJobs.Length; j++) AssertSame(alone[j], fused[j], $"job {j}");
        // The adapters really trained (B started at zero), so equality is not the trivial one.
        Assert.All(fused, p => Assert.True(p.Values.Max(t => t.abs().max().item<float>()) > 0));
    }

    [Fact]
    public void EveryMethodFusesWithLoraJobsAndTrainsWhatItTrainsAlone()
    {
        using var scope = NewDisposeScope();
        Job[] jobs =
        [
            LoraJobs[0],
            new(new LoraConfig { Rank = 4, Alpha = 8, Dropout = 0.1, UseDora = true, TargetModules = ["all-linear"] }, 5, new(2, 2, 0.01), 5),
            new(new LilyConfig { Rank = 4, NumExperts = 3, RouterMean = "batch", Dropout = 0.1, TargetModules = ["all-linear"] }, 6, new(2, 3, 0.01), 6),
            new(new LilyConfig { Rank = 4, NumExperts = 2, TargetModules = ["q_proj", "down_proj"] }, 4, new(2, 2, 0.01), 7),
            new(new RlrrConfig { Rank = 2, TargetModules = ["all-linear"] }, 5, new(2, 2, 0.01), 8),
            new(new MixLoraConfig { NumExperts = 3, TopK = 2, Rank = 2, Alpha = 4, Dropout = 0.1, TargetModules = ["q_proj"] }, 6, new(2, 3, 0.01), 9),
            LoraJobs[3],   // LoRA on the projections of the blocks MixLoRA replaces: applied inside the segmented block
        ];
        var alone = Alone(jobs);
        var (fused, errors, _) = Fused(jobs);
        Assert.All(errors, Assert.Null);
        for (int j = 0; j < jobs.Length; j++) AssertSame(alone[j], fused[j], $"{jobs[j].Config.Method} job {j}");
    }

    /// <summary>
    /// On Phi-3's fused layers (LongRoPE crossing its original context of 8, 3/4 of each head rotated): DoRA over the fused
    /// qkv_proj, and MixLoRA with a LoRA job on the projections of the blocks it replaces (the fused gate_up_proj and
    /// down_proj inside the segmented block) fuse and train what they train alone.
    /// </summary>
    [Fact]
    public void Phi3JobsOnFusedLayersFuseAndTrainWhatTheyTrainAlone()
    {
        using var scope = NewDisposeScope();
        var config = new Phi3Config
        {
            VocabSize = 264, HiddenSize = 32, IntermediateSize = 64, NumHiddenLayers = 2, NumAttentionHeads = 4, NumKeyValueHeads = 2,
            MaxPositionEmbeddings = 64, OriginalMaxPositionEmbeddings = 8, PartialRotaryFactor = 0.75,
            RopeScaling = new RopeScaling { Type = "longrope", ShortFactor = [1, 1.5, 2], LongFactor = [1, 3, 9] },
        };
        Job[] jobs =
        [
            new(new LoraConfig { Rank = 4, Alpha = 8, UseDora = true, TargetModules = ["qkv_proj", "o_proj"] }, 4, new(2, 2, 0.01), 5),
            new(new MixLoraConfig { NumExperts = 3, TopK = 2, Rank = 2, Alpha = 4, TargetModules = ["qkv_proj"] }, 4, new(2, 2, 0.01), 9),
            new(new LoraConfig { Rank = 4, Alpha = 16, TargetModules = ["gate_up_proj", "down_proj"] }, 5, new(2, 3, 0.01), 4),
        ];
        LlamaForCausalLM Phi() => Create(seed: 2, config);
        var alone = Alone(jobs, Phi);
        var (fused, errors, _) = Fused(jobs, create: Phi);
        Assert.All(errors, Assert.Null);
        for (int j = 0; j < jobs.Length; j++) AssertSame(alone[j], fused[j], $"{jobs[j].Config.Method} job {j} on phi3");
        Assert.Contains(fused[0].Keys, k => k.Contains("qkv_proj"));
        Assert.Contains(fused[2].Keys, k => k.Contains("gate_up_proj"));
    }

    /// <summary>
    /// A learning-rate sweep (<see cref="Sweep"/>): its members share the job's adapter config, seed and data and differ
    /// only in the rate <see cref="Sweep.HyperparametersOf"/> gives them. Fused, each member must train the adapter it
    /// trains alone with that rate, and the members must differ (each really used its own rate).
    /// </summary>
    [Fact]
    public void ASweepsMembersFusedTrainWhatEachTrainsAloneWithItsRate()
    {
        using var scope = NewDisposeScope();
        var sweep = new Sweep(Sweep.LearningRateMultiplier, [0.5, 1, 2]);
        var job = new FineTuningJob
        {
            Id = "ftjob-sweep", Model = "tiny", TrainingFile = "file-x", Epochs = 2, BatchSize = 2, LearningRateMultiplier = 0.5, Seed = 7,
            AdapterType = "lora", AdapterConfig = "{}", Sweep = sweep.ToJson(),
        };
        var config = new LoraConfig { Rank = 4, Alpha = 8, Dropout = 0.1, TargetModules = ["all-linear"] };
        var members = Enumerable.Range(0, 3).Select(m => new Job(config, 6, Sweep.Of(job)!.HyperparametersOf(job, m), job.Seed)).ToList();
        Assert.Equal([0.002, 0.004, 0.008], members.Select(m => m.Hp.LearningRate));

        var alone = Alone(members, data: _ => Examples(0, 6));
        var (fused, errors, mostFused) = Fused(members, data: _ => Examples(0, 6));
        Assert.Equal(3, mostFused);
        Assert.All(errors, Assert.Null);
        for (int m = 0; m < members.Count; m++) AssertSame(alone[m], fused[m], $"member {m}");
        foreach (var (a, b) in new[] { (0, 1), (1, 2) })
            Assert.True(fused[a].Keys.Max(k => (fused[a][k] - fused[b][k]).abs().max().item<float>()) > 1e-3, $"members {a} and {b} trained alike");
    }

    [Fact]
    public void AJobThatLeavesEarlyDoesNotChangeTheOthers()
    {
        using var scope = NewDisposeScope();
        var alone = LoraAlone.Value;
        // Job 1 is cancelled after its second step: it leaves the fused batch, the others go on.
        var (fused, errors, _) = Fused(LoraJobs, leave: (j, p) => j == 1 && p.Step == 2);
        Assert.All(errors, Assert.Null);
        foreach (int j in new[] { 0, 2, 3 }) AssertSame(alone[j], fused[j], $"job {j}");
        Assert.True(alone[1].Keys.Max(k => (alone[1][k] - fused[1][k]).abs().max().item<float>()) > 1e-3, "job 1 stopped early, so it trained less");
    }

    [Fact]
    public void AJobWhoseAdapterTurnsNanFailsAloneAndTheOthersTrainAsAlone()
    {
        using var scope = NewDisposeScope();
        var alone = LoraAlone.Value;
        var (fused, errors, _) = Fused(LoraJobs, prepare: (j, adapter) =>
        {
            if (j == 2) using (no_grad()) adapter.Parameters().First().fill_(float.NaN);
        });
        Assert.IsType<TrainingDivergedException>(errors[2]);
        Assert.Contains("step 1", errors[2]!.Message);
        foreach (int j in new[] { 0, 1, 3 }) { Assert.Null(errors[j]); AssertSame(alone[j], fused[j], $"job {j}"); }
    }

    [Fact]
    public void AJobWhoseStepThrowsFailsAloneAndTheOthersTrainAsAlone()
    {
        using var scope = NewDisposeScope();
        var alone = LoraAlone.Value;
        // Job 3's data holds a token id the model's vocabulary lacks: the embedding lookup of the fused batch throws.
        var (fused, errors, _) = Fused(LoraJobs, failOnAlone: false, data: j => j == 3
            ? [.. Examples(3, LoraJobs[3].Examples).Select(e => e with { Ids = [.. e.Ids.Select(i => i + Config.VocabSize)] })]
            : Examples(j, LoraJobs[j].Examples));
        Assert.NotNull(errors[3]);
        foreach (int j in new[] { 0, 1, 2 }) { Assert.Null(errors[j]); AssertSame(alone[j], fused[j], $"job {j}"); }
    }

    /// <summary>
    /// Fused steps that recompute their layers in the backward pass (all of them, or the first half) train what the jobs
    /// train alone: each job's dropout generator is rewound for the recomputed layer, so its masks are those of the forward pass.
    /// </summary>
    [Theory]
    [InlineData(1.0)]
    [InlineData(0.5)]
    public void CheckpointedFusedStepsTrainWhatTheJobsTrainAlone(double checkpointShare)
    {
        using var scope = NewDisposeScope();
        var alone = LoraAlone.Value;
        var (fused, errors, mostFused) = Fused(LoraJobs, checkpointShare: checkpointShare);
        Assert.Equal(4, mostFused);
        Assert.All(errors, Assert.Null);
        for (int j = 0; j < LoraJobs.Length; j++) AssertSame(alone[j], fused[j], $"job {j}, {checkpointShare:P0} of the layers recomputed");
    }

    static TokenizedExample Sequence(string prompt, string answer)
    {
        var (ids, train) = ModelText.BuiltIn.EncodeExample(new CompletionExample(0, prompt, answer), null)[0];
        return new TokenizedExample([.. ids], [.. train]);
    }

    /// <summary>
    /// Rollouts that depend on the prompt and the step's seed only (not on the adapter), so a job alone and fused samples
    /// the same: lengths 0 to 4 (an empty one is not trained on), "a" for even lengths (which the grader rewards).
    /// </summary>
    sealed class FixedRollouts : IRolloutSampler
    {
        public IReadOnlyList<IReadOnlyList<Rollout>> Sample(IReadOnlyList<int[]> prompts, int n, double temperature, int maxTokens, long seed, CancellationToken cancel) =>
            prompts.Select((p, i) =>
            {
                var random = new Random(unchecked((int)(seed * 31 + i * 7 + p.Length)));
                return (IReadOnlyList<Rollout>)Enumerable.Range(0, n).Select(_ =>
                {
                    int length = random.Next(0, 5);
                    return new Rollout([.. Enumerable.Range(0, length).Select(_ => random.Next(3, 200))], length % 2 == 0 ? "a" : "b");
                }).ToList();
            }).ToList();
    }

    /// <summary>An SFT, a DPO and a reinforcement (GRPO) job, each made over a given model.</summary>
    static readonly Func<LlamaForCausalLM, List<TrainableAdapter>, FusableTrainer>[] ObjectiveJobs =
    [
        (model, adapters) => NewTrainer(model, LoraJobs[0], 0, adapters),
        (model, adapters) =>
        {
            var adapter = adapters.AddAndReturn(TrainableAdapter.Create(model, new LoraConfig { Rank = 4, Alpha = 8, Dropout = 0.1, TargetModules = ["all-linear"] }, seed: 21));
            List<PreferencePair> pairs =
            [
                new(Sequence("q1:", "yes"), Sequence("q1:", "no")),
                new(Sequence("question two:", "ok"), Sequence("question two:", "not ok!")),
                new(Sequence("3?", "a b c"), Sequence("3?", "x")),
                new(Sequence("four, four:", "fine"), Sequence("four, four:", "bad")),
                new(Sequence("five", "5"), Sequence("five", "six")),
            ];
            return new PreferenceTrainer(model, adapter, pairs, null, new(2, 2, 0.02), beta: 0.5, seed: 21, referenceIsAdapter: false);
        },
        (model, adapters) =>
        {
            var adapter = adapters.AddAndReturn(TrainableAdapter.Create(model, new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["q_proj", "v_proj", "down_proj"] }, seed: 22));
            var grader = Graders.Parse(JsonDocument.Parse("""{"type": "string_check", "name": "s", "operation": "eq", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}""").RootElement, "grader");
            var prompts = Enumerable.Range(0, 4).Select(i => new RlPrompt(i, [.. Sequence($"prompt {i}?", "").Ids], JsonDocument.Parse("""{"answer": "a"}""").RootElement)).ToList();
            return new GrpoTrainer(model, adapter, prompts, grader, null, new FixedRollouts(), new(2, 2, 0.02), new GrpoSettings(GroupSize: 4, Beta: 0.1, MaxTokens: 4), seed: 22);
        },
    ];

    /// <summary>
    /// DPO and reinforcement jobs fuse with an SFT job: each objective's loss is taken on its own rows of the fused batch
    /// (DPO against its reference computed with the adapter off, GRPO against the reference pass it runs before the fused
    /// pass), and each trains the adapter it trains alone, with and without recomputed layers.
    /// </summary>
    [Theory]
    [InlineData(0.0)]
    [InlineData(0.5)]
    public void DpoAndReinforcementJobsFuseWithAnSftJobAndTrainWhatTheyTrainAlone(double checkpointShare)
    {
        using var scope = NewDisposeScope();
        var alone = new List<Dictionary<string, Tensor>>();
        using (var model = Create())
            foreach (var make in ObjectiveJobs)
            {
                var adapters = new List<TrainableAdapter>();
                using var trainer = make(model, adapters);
                trainer.Run(_ => { }, CancellationToken.None);
                alone.Add(Weights(adapters[0]));
                TrainableAdapter.Detach(model);
            }

        using var shared = Create();
        var fusedAdapters = new List<TrainableAdapter>();
        var trainers = ObjectiveJobs.Select(make => make(shared, fusedAdapters)).ToList();
        foreach (var t in trainers) t.BeginRun();
        var metrics = new List<IReadOnlyDictionary<string, double>?>[trainers.Count];
        for (int j = 0; j < trainers.Count; j++) metrics[j] = [];
        int mostFused = 0;
        while (trainers.Any(t => !t.Finished))
        {
            var active = Enumerable.Range(0, trainers.Count).Where(j => !trainers[j].Finished).ToList();
            mostFused = Math.Max(mostFused, active.Count);
            var outcomes = FusedTrainer.Step(shared, active.Select(j => trainers[j]).ToList(), checkpointShare);
            if (active.Count > 1) Assert.DoesNotContain(outcomes, o => o.Alone);   // the fused pass ran
            foreach (var (j, outcome) in active.Zip(outcomes))
            {
                Assert.Null(outcome.Error);
                metrics[j].Add(outcome.Progress!.Metrics);
            }
        }
        foreach (var t in trainers) { t.EndRun(); t.Dispose(); }
        Assert.Equal(3, mostFused);
        string[] names = ["sft", "dpo", "reinforcement"];
        for (int j = 0; j < trainers.Count; j++)
        {
            AssertSame(alone[j], Weights(fusedAdapters[j]), $"{names[j]} job fused");
            Assert.True(fusedAdapters[j].SavedParameters().Max(p => p.Value.abs().max().item<float>()) > 0, $"{names[j]} trained");
        }
        // Each objective reports its own metrics from the fused step.
        Assert.All(metrics[1], m => Assert.Contains("preference_accuracy", m!.Keys));
        Assert.All(metrics[2], m => Assert.Contains("reward_mean", m!.Keys));
    }

    [Fact]
    public void TrainersOverDifferentModelsAreRefused()
    {
        using var scope = NewDisposeScope();
        using var a = Create();
        using var b = Create();
        var adapters = new List<TrainableAdapter>();
        using var one = NewTrainer(a, LoraJobs[0], 0, adapters);
        using var two = NewTrainer(b, LoraJobs[1], 1, adapters);
        Assert.Throws<ArgumentException>(() => FusedTrainer.Step(a, [one, two]));
    }
}

static class ListExtensions
{
    public static T AddAndReturn<T>(this List<TrainableAdapter> list, T item) where T : TrainableAdapter
    {
        list.Add(item);
        return item;
    }
}
