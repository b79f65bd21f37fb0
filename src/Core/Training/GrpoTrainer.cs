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
public sealed class GrpoTrainer : FusableTrainer
{
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
        : base(model, adapter, prompts.Count, hp, seed)
    {
        (this.prompts, this.grader, this.judge, this.sampler, this.settings, this.reference, this.seed) =
            (prompts, grader, judge, sampler, settings, reference, seed);
        reference?.Train(false);
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

    /// <summary>A step's rollouts: its prompts, their sampled groups, the rewards and their group-normalised advantages.</summary>
    sealed record Rollouts(List<RlPrompt> Prompts, IReadOnlyList<IReadOnlyList<Rollout>> Groups, List<double[]> Rewards, List<double[]> Advantages)
    {
        public int Samples => Groups.Sum(g => g.Count);

        /// <summary>The indices of group <paramref name="g"/>'s samples that have tokens to train on.</summary>
        public List<int> Kept(int g) => Enumerable.Range(0, Groups[g].Count).Where(i => Groups[g][i].Tokens.Length > 0).ToList();
    }

    /// <summary>Samples and grades the step's groups with the adapter as it is now.</summary>
    Rollouts Roll(IReadOnlyList<int> batch)
    {
        var chosen = batch.Select(i => prompts[i]).ToList();
        var groups = sampler.Sample(chosen.Select(p => p.Prompt).ToList(), settings.GroupSize, settings.Temperature, settings.MaxTokens,
            seed * 1_000_003 + Step, Cancel);
        var rewards = GradeAll(chosen, groups);
        return new(chosen, groups, rewards, rewards.Select(Grpo.GroupAdvantages).ToList());
    }

    /// <summary>
    /// The rows of the samples <paramref name="kept"/> of groups (group, sample) and, per trained token, its advantage and
    /// its weight in the batch's mean (1 / (|o_i| · samples)).
    /// </summary>
    (TokenRows Rows, Tensor Advantages, Tensor Weights, long Tokens) Rows(Rollouts r, IReadOnlyList<(int Group, int Sample)> kept)
    {
        int samples = r.Samples;
        var examples = kept.Select(k => Sequence(r.Prompts[k.Group].Prompt, r.Groups[k.Group][k.Sample].Tokens)).ToList();
        var rows = TokenRows.Collate(examples, padId: 0, pack: false);
        var advantages = tensor(kept.SelectMany(k => Enumerable.Repeat(r.Advantages[k.Group][k.Sample], r.Groups[k.Group][k.Sample].Tokens.Length)).ToArray())
            .to_type(ScalarType.Float32);
        var weights = tensor(kept.SelectMany(k => Enumerable.Repeat(1.0 / r.Groups[k.Group][k.Sample].Tokens.Length / samples, r.Groups[k.Group][k.Sample].Tokens.Length))
            .ToArray()).to_type(ScalarType.Float32);
        return (rows, advantages, weights, examples.Sum(e => e.Ids.Length - 1L));
    }

    protected override double TrainStep(IReadOnlyList<int> batch)
    {
        var r = Roll(batch);
        int samples = r.Samples;

        // One group per micro-batch: its loss is its share of the batch's mean (weights 1 / (|o_i| · samples)), gradients add up.
        double loss = 0, kl = 0;
        long tokens = 0;
        for (int g = 0; g < r.Prompts.Count; g++)
        {
            var kept = r.Kept(g);
            if (kept.Count == 0) continue;
            using var scope = NewDisposeScope();
            var (rows, advantages, weights, partTokens) = Rows(r, kept.Select(i => (g, i)).ToList());
            var referenceLogprobs = ReferenceLogprobs(rows);
            var (partLoss, partKl) = Grpo.Loss(Logprobs(rows), referenceLogprobs, advantages, weights, settings.Beta);
            Backward(partLoss, kept.Count / (double)samples);
            loss += partLoss.item<float>();
            kl += partKl.item<float>();
            tokens += partTokens;
        }
        OptimizerStep(loss, tokens);
        return Finish(r, kl);
    }

    /// <summary>
    /// A fused step's part: the rollouts and the starting model's log-probabilities are computed here, alone (the
    /// rollouts through the engine, the reference pass over the group's base with the starting model attached); the fused
    /// pass then takes every kept sample of every group as rows of one piece. A step whose samples are all empty trains
    /// on nothing.
    /// </summary>
    internal override FusedPart Prepare(IReadOnlyList<int> batch)
    {
        var r = Roll(batch);
        var kept = Enumerable.Range(0, r.Prompts.Count).SelectMany(g => r.Kept(g).Select(i => (g, i))).ToList();
        double kl = 0;
        if (kept.Count == 0) return new(null, 0, _ => throw new InvalidOperationException("no rows"), () => Finish(r, kl));
        var (rows, advantages, weights, tokens) = Rows(r, kept);
        var referenceLogprobs = ReferenceLogprobs(rows);
        return new(rows, tokens, logits =>
        {
            var (loss, klTensor) = Grpo.Loss(LogprobsOf(logits, rows), referenceLogprobs, advantages, weights, settings.Beta);
            kl = klTensor.item<float>();
            return (loss, kept.Count / (double)r.Samples);
        }, () => Finish(r, kl));
    }

    /// <summary>After the optimizer step: the step's statistics, and the held-out evaluation when it is due; returns the mean reward.</summary>
    double Finish(Rollouts r, double kl)
    {
        var all = r.Rewards.SelectMany(x => x).ToList();
        LastStats = new GrpoStepStats(all.Average(), r.Rewards.Average(StandardDeviation), kl, r.Groups.SelectMany(g => g).Average(x => x.Tokens.Length));
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
        var (input, blocks, head) = Model.Chain(rows.Inputs, rows.Positions, rows.Mask);
        var hidden = blocks.Aggregate(input, (h, block) => block(h));
        return LogprobsOf(head(hidden.flatten(0, 1).index_select(0, rows.TrainedPositions)), rows);   // head on [n, hidden]
    }

    /// <summary>The log-probability of each trained target of <paramref name="rows"/> under the logits [n, vocab] at its trained positions.</summary>
    static Tensor LogprobsOf(Tensor logits, TokenRows rows) =>
        nn.functional.log_softmax(logits.to_type(ScalarType.Float32), 1).gather(1, rows.TrainedTargets.unsqueeze(1)).squeeze(1);

    /// <summary>The starting model's log-probabilities: the adapter switched off (or the frozen starting adapter in its place).</summary>
    Tensor ReferenceLogprobs(TokenRows rows)
    {
        using var noGrad = no_grad();
        TrainableAdapter.Detach(Model);
        reference?.Attach(Model);
        try
        {
            return Logprobs(rows).detach();
        }
        finally
        {
            TrainableAdapter.Detach(Model);
            Adapter.Attach(Model);
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
