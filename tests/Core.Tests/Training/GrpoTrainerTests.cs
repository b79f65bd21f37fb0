using System.Diagnostics;
using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Builtins;
using AdapterService.Core.Grading;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using AdapterService.Core.Training;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Training;

/// <summary>GRPO end to end in Core: the built-in demo base, rollouts through the inference engine, a text-similarity grader.</summary>
public sealed class GrpoTrainerTests(ITestOutputHelper output) : IDisposable
{
    readonly string folder = Directory.CreateTempSubdirectory("grpo-").FullName;

    public void Dispose() => Directory.Delete(folder, true);

    /// <summary>The tiny demo base with random weights and the byte tokenizer, an engine for rollouts, and a fresh LoRA on it.</summary>
    (ModelText Text, CausalLanguageModel Model, InferenceEngine Engine, TrainableAdapter Adapter) Setup()
    {
        TorchRuntime.EnsureReady();
        using (var random = RandomModel.Create(BuiltinModels.TinyDemo.Config, BuiltinModels.TinyDemo.Seed)) ModelFolder.Save(random, folder);
        ByteTokenizer.Save(folder);
        var model = ModelFolder.Load<CausalLanguageModel>(folder);
        var adapter = TrainableAdapter.Create(model, new LoraConfig { Rank = 8, Alpha = 16, TargetModules = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"] }, seed: 5);
        return (ModelText.ForModel(folder), model, new InferenceEngine(new InferenceOptions { MaxBatch = 32 }), adapter);
    }

    /// <summary>Eight prompts (question <c>i × step</c>), each graded against the answer "sky".</summary>
    static List<RlPrompt> Prompts(ModelText text, string question, int step) =>
        [.. Enumerable.Range(0, 8).Select(i => new RlPrompt(i, [.. text.EncodeCompletion(string.Format(question, i * step) + "\n")],
            JsonDocument.Parse("""{"answer": "sky"}""").RootElement))];

    [Fact]
    public void RewardRisesAndRolloutsUseTheAdapterAsItIsNow()
    {
        var (text, model, engine, adapter) = Setup();
        using var _ = model;
        using var __ = engine;
        var grader = Graders.Parse(JsonDocument.Parse("""{"type": "text_similarity", "name": "s", "evaluation_metric": "fuzzy_match", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}""").RootElement, "grader");
        var (train, heldOut) = (Prompts(text, "question {0}?", 1), Prompts(text, "another one {0}?", 7));
        var sampler = new EngineRollouts(engine, "tiny", folder, model, adapter, text, "job");
        using var trainer = new GrpoTrainer(model, adapter, train, grader, null, sampler,
            new Hyperparameters(Epochs: 8, BatchSize: 4, LearningRate: 4e-3 * 4), new GrpoSettings(GroupSize: 8, Beta: 0.04, MaxTokens: 8), seed: 11)
        { Validation = heldOut, EvalInterval = 5, EvalSamples = 2 };
        double before = trainer.Evaluate(heldOut, 8, evalSeed: 1);
        var clock = Stopwatch.StartNew();
        var evaluated = new List<int>();
        trainer.Run(p =>
        {
            output.WriteLine($"step {p.Step}: reward {trainer.LastStats!.RewardMean:F3} spread {trainer.LastStats.RewardStd:F3} kl {trainer.LastStats.Kl:F4} length {trainer.LastStats.CompletionTokens:F1} loss {p.TrainLoss:F4}");
            Assert.Equal(trainer.LastStats.RewardMean, p.Metrics!["reward_mean"]);
            if (p.Metrics.ContainsKey("valid_reward_mean")) evaluated.Add(p.Step);
        }, default);
        Assert.Equal([5, 10, 15, 16], evaluated);   // every eval_interval steps, and at the end
        double after = trainer.Evaluate(heldOut, 8, evalSeed: 1);
        output.WriteLine($"held-out reward {before:F3} → {after:F3} in {clock.Elapsed.TotalSeconds:F1} s");
        Assert.True(after - before >= 0.2, $"held-out reward {before:F3} → {after:F3}");
        Assert.Equal(0, engine.Adapters.Count);   // every step's snapshot was dropped
    }

    [Fact]
    public void StringCheckLiftsAModelThatIsRightOnlySometimes()
    {
        var (text, model, engine, adapter) = Setup();
        using var _ = model;
        using var __ = engine;
        // Two supervised steps: the model says exactly "sky" only some of the time (a string check then has groups to learn from).
        var sft = Enumerable.Range(0, 8).Select(i => text.EncodeExample(new AdapterService.Core.Data.CompletionExample(i, $"question {i}?\n", "sky"), null)[0])
            .Select(s => new TokenizedExample(s.Ids, s.Train)).ToList();
        using (var supervised = new LanguageModelTrainer(model, adapter, sft, new Hyperparameters(1, 4, 4e-3 * 4), 0, 3))
            supervised.Run(_ => { }, default);
        var grader = Graders.Parse(JsonDocument.Parse("""{"type": "string_check", "name": "s", "operation": "eq", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}""").RootElement, "grader");
        var (train, heldOut) = (Prompts(text, "question {0}?", 1), Prompts(text, "another one {0}?", 7));
        var sampler = new EngineRollouts(engine, "tiny", folder, model, adapter, text, "job");
        // The supervised model, frozen, is the starting model the KL refers to (as a job continuing from it has).
        var reference = TrainableAdapter.Create(model, adapter.Config);
        using (no_grad())
            foreach (var ((_, to), (_, from)) in reference.SavedParameters().Zip(adapter.SavedParameters())) to.copy_(from);
        using var trainer = new GrpoTrainer(model, adapter, train, grader, null, sampler,
            new Hyperparameters(Epochs: 8, BatchSize: 4, LearningRate: 4e-3 * 4), new GrpoSettings(GroupSize: 8, Beta: 0.04, MaxTokens: 8), seed: 11, reference);
        double before = trainer.Evaluate(heldOut, 8, evalSeed: 1);
        var clock = Stopwatch.StartNew();
        trainer.Run(p => output.WriteLine($"step {p.Step}: reward {trainer.LastStats!.RewardMean:F3} spread {trainer.LastStats.RewardStd:F3} kl {trainer.LastStats.Kl:F4} length {trainer.LastStats.CompletionTokens:F1}"), default);
        double after = trainer.Evaluate(heldOut, 8, evalSeed: 1);
        output.WriteLine($"held-out reward {before:F3} → {after:F3} in {clock.Elapsed.TotalSeconds:F1} s");
        Assert.True(after - before >= 0.2, $"held-out reward {before:F3} → {after:F3}");
    }
}
