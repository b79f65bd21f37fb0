using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Grading;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>A reinforcement prompt: its chat prompt's token ids and the whole data line, the <c>item</c> graders read.</summary>
public sealed record RlPrompt(int Line, int[] Prompt, JsonElement Item);

/// <summary>GRPO's settings beyond the shared hyperparameters (docs/METHODS.md).</summary>
/// <param name="GroupSize">Completions sampled per prompt (G).</param>
/// <param name="Beta">Weight of the KL penalty to the starting model (β).</param>
/// <param name="MaxTokens">Longest completion sampled.</param>
/// <param name="Temperature">Sampling temperature of the rollouts.</param>
public sealed record GrpoSettings(int GroupSize, double Beta, int MaxTokens, double Temperature = 1.0);

/// <summary>What one step saw: the rewards' mean, their spread within groups, the KL to the starting model, the completions' mean length.</summary>
public sealed record GrpoStepStats(double RewardMean, double RewardStd, double Kl, double CompletionTokens);

/// <summary>
/// Reinforcement fine-tuning of an adapter by GRPO (<see cref="Grpo"/>): each step takes a batch of prompts, samples a
/// group of completions per prompt with the adapter as it is now (<see cref="IRolloutSampler"/>: the inference engine),
/// grades them (<see cref="Grader"/>), normalises the rewards within each group and takes one optimizer step on the
/// policy-gradient loss with a KL penalty to the starting model. The starting model is the base with the adapter switched
/// off, or, for a job that continues from a fine-tuned model, that model's adapter frozen (the constructor's <c>reference</c>).
/// The loop, optimizer, learning-rate decay and state are <see cref="AdapterTrainer"/>'s; rollouts are seeded from
/// (seed, step), so a resumed job samples what it would have.
/// </summary>
public sealed class GrpoTrainer : AdapterTrainer
{
    readonly CausalLanguageModel model;
    readonly IReadOnlyList<RlPrompt> prompts;
    readonly Grader grader;
    readonly IJudge? judge;
    readonly IRolloutSampler sampler;
    readonly GrpoSettings settings;
    readonly TrainableAdapter? reference;
    readonly long seed;

    /// <summary>The last step's rewards, spread and KL.</summary>
    public GrpoStepStats? LastStats { get; private set; }

    public GrpoTrainer(CausalLanguageModel model, TrainableAdapter adapter, IReadOnlyList<RlPrompt> prompts, Grader grader, IJudge? judge,
        IRolloutSampler sampler, Hyperparameters hp, GrpoSettings settings, long seed, TrainableAdapter? reference = null)
        : base(adapter, prompts.Count, hp, seed, Attached(model, adapter).Parameters())
    {
        (this.model, this.prompts, this.grader, this.judge, this.sampler, this.settings, this.reference, this.seed) =
            (model, prompts, grader, judge, sampler, settings, reference, seed);
        reference?.Train(false);
    }

    static TrainableAdapter Attached(CausalLanguageModel model, TrainableAdapter adapter)
    {
        foreach (var p in model.parameters()) p.requires_grad = false;
        adapter.Attach(model);
        return adapter;
    }

    /// <summary>Cancels the rollouts of a step in progress.</summary>
    public CancellationToken Cancel { get; set; }

    /// <summary>Held-out prompts (the validation file), evaluated every <see cref="EvalInterval"/> steps and at the end.</summary>
    public IReadOnlyList<RlPrompt>? Validation { get; init; }
    /// <summary>Steps between evaluations on <see cref="Validation"/>; 0: once per epoch.</summary>
    public int EvalInterval { get; init; }
    /// <summary>Completions sampled per validation prompt in an evaluation.</summary>
    public int EvalSamples { get; init; } = 4;
    /// <summary>The mean reward of the last evaluation on <see cref="Validation"/>, and the step it was taken after.</summary>
    public (int Step, double Reward)? LastEvaluation { get; private set; }

    protected override double TrainStep(IReadOnlyList<int> batch)
    {
        var chosen = batch.Select(i => prompts[i]).ToList();
        var groups = sampler.Sample(chosen.Select(p => p.Prompt).ToList(), settings.GroupSize, settings.Temperature, settings.MaxTokens,
            seed * 1_000_003 + Step, Cancel);
        var rewards = GradeAll(chosen, groups);
        var advantages = rewards.Select(Grpo.GroupAdvantages).ToList();
        int samples = groups.Sum(g => g.Count);

        // One group per micro-batch: its loss is its share of the batch's mean (weights 1 / (|o_i| · samples)), gradients add up.
        double loss = 0, kl = 0;
        long tokens = 0;
        for (int g = 0; g < chosen.Count; g++)
        {
            var kept = Enumerable.Range(0, groups[g].Count).Where(i => groups[g][i].Tokens.Length > 0).ToList();
            if (kept.Count == 0) continue;
            using var scope = NewDisposeScope();
            var examples = kept.Select(i => Sequence(chosen[g].Prompt, groups[g][i].Tokens)).ToList();
            var rows = TokenRows.Collate(examples, padId: 0, pack: false);
            var tokenAdvantages = tensor(kept.SelectMany(i => Enumerable.Repeat(advantages[g][i], groups[g][i].Tokens.Length)).ToArray()).to_type(ScalarType.Float32);
            var weights = tensor(kept.SelectMany(i => Enumerable.Repeat(1.0 / groups[g][i].Tokens.Length / samples, groups[g][i].Tokens.Length)).ToArray())
                .to_type(ScalarType.Float32);
            var referenceLogprobs = ReferenceLogprobs(rows);
            var (partLoss, partKl) = Grpo.Loss(Logprobs(rows), referenceLogprobs, tokenAdvantages, weights, settings.Beta);
            Backward(partLoss, kept.Count / (double)samples);
            loss += partLoss.item<float>();
            kl += partKl.item<float>();
            tokens += examples.Sum(e => e.Ids.Length - 1L);
        }
        OptimizerStep(loss, tokens);
        var all = rewards.SelectMany(r => r).ToList();
        LastStats = new GrpoStepStats(all.Average(), rewards.Average(StandardDeviation), kl, groups.SelectMany(g => g).Average(r => r.Tokens.Length));
        int done = Step + 1, interval = EvalInterval > 0 ? EvalInterval : StepsPerEpoch;
        if (Validation is { Count: > 0 } validation && (done % interval == 0 || done == TotalSteps))
            LastEvaluation = (done, Evaluate(validation, EvalSamples, seed * 31 + 17));   // the same draws each time: changes are the policy's
        return LastStats.RewardMean;
    }

    /// <summary>The step's rewards, their spread within groups, the KL to the starting model, and the last held-out evaluation when this step made one.</summary>
    protected override IReadOnlyDictionary<string, double>? StepMetrics
    {
        get
        {
            if (LastStats is not { } s) return null;
            var metrics = new Dictionary<string, double>
            {
                ["reward_mean"] = s.RewardMean, ["reward_std"] = s.RewardStd, ["kl"] = s.Kl, ["completion_tokens"] = s.CompletionTokens,
            };
            if (LastEvaluation is { } e && e.Step == Step) metrics["valid_reward_mean"] = e.Reward;   // read after the step is counted
            return metrics;
        }
    }

    /// <summary>Every sample's grade, asked for all at once (a score_model judge's replies then decode together in the engine's batches).</summary>
    List<double[]> GradeAll(IReadOnlyList<RlPrompt> prompts, IReadOnlyList<IReadOnlyList<Rollout>> groups)
    {
        var grades = prompts.Select((p, i) => Task.WhenAll(groups[i].Select(r => grader.GradeAsync(new GradingInput(p.Item, r.Text, judge), Cancel)))).ToList();
        return [.. Task.WhenAll(grades).GetAwaiter().GetResult()];
    }

    static double StandardDeviation(double[] values)
    {
        double mean = values.Average();
        return Math.Sqrt(values.Sum(v => (v - mean) * (v - mean)) / values.Length);
    }

    static TokenizedExample Sequence(int[] prompt, int[] completion) =>
        new([.. prompt, .. completion], [.. Enumerable.Repeat(false, prompt.Length), .. Enumerable.Repeat(true, completion.Length)]);

    /// <summary>The policy's log-probability of each completion token (flattened as <see cref="TokenRows.TrainedTargets"/>), with gradient.</summary>
    Tensor Logprobs(TokenRows rows)
    {
        var (input, blocks, head) = model.Chain(rows.Inputs, rows.Positions, rows.Mask);
        var hidden = blocks.Aggregate(input, (h, block) => block(h));
        var logits = head(hidden.flatten(0, 1).index_select(0, rows.TrainedPositions)).to_type(ScalarType.Float32);   // [n, vocab]
        return nn.functional.log_softmax(logits, 1).gather(1, rows.TrainedTargets.unsqueeze(1)).squeeze(1);
    }

    /// <summary>The starting model's log-probabilities: the adapter switched off (or the frozen starting adapter in its place).</summary>
    Tensor ReferenceLogprobs(TokenRows rows)
    {
        using var noGrad = no_grad();
        TrainableAdapter.Detach(model);
        reference?.Attach(model);
        try
        {
            return Logprobs(rows).detach();
        }
        finally
        {
            TrainableAdapter.Detach(model);
            Adapter.Attach(model);
        }
    }

    /// <summary>
    /// The mean reward of <paramref name="samples"/> completions per prompt of <paramref name="data"/> (held-out prompts),
    /// sampled as training samples them, with the adapter as it is now; seeded by <paramref name="evalSeed"/>.
    /// </summary>
    public double Evaluate(IReadOnlyList<RlPrompt> data, int samples, long evalSeed)
    {
        if (data.Count == 0) return double.NaN;
        var groups = sampler.Sample(data.Select(p => p.Prompt).ToList(), samples, settings.Temperature, settings.MaxTokens, evalSeed, Cancel);
        return GradeAll(data, groups).Average(g => g.Average());
    }

    public override void Dispose()
    {
        reference?.Dispose();
        base.Dispose();
    }
}
