using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>A preference pair as token sequences: the conversation ending in the preferred answer and the one ending in the other, each trained on that answer only.</summary>
public sealed record PreferencePair(TokenizedExample Chosen, TokenizedExample Rejected)
{
    /// <summary>The pairs of a tokenized preference file, whose sequences come two by two (chosen, then rejected).</summary>
    public static List<PreferencePair> Of(IReadOnlyList<TokenizedExample> sequences)
    {
        if (sequences.Count % 2 != 0) throw new InvalidDataException("a preference file's sequences come in pairs");
        return Enumerable.Range(0, sequences.Count / 2).Select(i => new PreferencePair(sequences[2 * i], sequences[2 * i + 1])).ToList();
    }
}

/// <summary>
/// The DPO objective of "Direct Preference Optimization: Your Language Model is Secretly a Reward Model" (Rafailov et al.,
/// https://arxiv.org/abs/2305.18290), equation 7, per pair: −log σ(β·(log π(y_w|x) − log π_ref(y_w|x)) − β·(log π(y_l|x) − log π_ref(y_l|x))),
/// where log π(y|x) is the sum of the answer's token log-probabilities. β·(log π − log π_ref) is the implicit reward of §5.
/// </summary>
public static class DpoLoss
{
    /// <summary>
    /// Per pair [n]: the loss, and (without gradient) the chosen and rejected rewards. All inputs are sequence
    /// log-probabilities [n]; the reference ones carry no gradient.
    /// </summary>
    public static (Tensor Loss, Tensor ChosenReward, Tensor RejectedReward) Of(Tensor policyChosen, Tensor policyRejected,
        Tensor referenceChosen, Tensor referenceRejected, double beta)
    {
        var chosen = beta * (policyChosen - referenceChosen);
        var rejected = beta * (policyRejected - referenceRejected);
        var loss = -nn.functional.logsigmoid(chosen - rejected);
        return (loss, chosen.detach(), rejected.detach());
    }
}

/// <summary>
/// Preference fine-tuning (DPO) of an adapter of any method on a frozen causal language model. The reference policy is
/// the starting model: the base alone (the adapter switched off) or, for a job continuing from a fine-tuned model, the
/// adapter as it was loaded. Its sequence log-probabilities are computed once, without gradient, when the trainer is
/// made (before a saved state is loaded, so a resumed run keeps the same reference). A step takes its pairs' chosen and
/// rejected sequences as rows of one padded batch (in micro-batches when <see cref="TrainingSpeedOptions.MicroBatchSize"/>
/// says so); the loss of a step is the mean over its pairs. Its accuracy is the preference accuracy: the share of pairs
/// whose chosen reward is above the rejected one.
/// </summary>
public sealed class PreferenceTrainer : FusableTrainer
{
    readonly IReadOnlyList<PreferencePair> pairs;
    readonly IReadOnlyList<PreferencePair>? validation;
    readonly double beta;
    readonly int? microBatch;
    readonly bool referenceIsAdapter;
    readonly double[,] reference, validationReference;
    Dictionary<string, double>? lastMetrics;

    /// <param name="model">The frozen base.</param>
    /// <param name="adapter">The adapter trained, attached here; as loaded, it is the reference when <paramref name="referenceIsAdapter"/>.</param>
    /// <param name="pairs">The training pairs.</param>
    /// <param name="validation">The validation pairs, or null.</param>
    /// <param name="hp">Epochs, batch size (pairs per step), learning rate.</param>
    /// <param name="beta">β of the DPO loss.</param>
    /// <param name="seed">Seeds the batch order and the dropout masks.</param>
    /// <param name="referenceIsAdapter">The reference is the adapter as it is now (continuing from a fine-tuned model), not the base alone.</param>
    /// <param name="options">Micro-batches (packing and checkpointing do not apply: each sequence is a row of its own).</param>
    public PreferenceTrainer(CausalLanguageModel model, TrainableAdapter adapter, IReadOnlyList<PreferencePair> pairs, IReadOnlyList<PreferencePair>? validation,
        Hyperparameters hp, double beta, long seed, bool referenceIsAdapter, TrainingSpeedOptions? options = null)
        : base(model, adapter, pairs.Count, hp, seed)
    {
        options ??= new TrainingSpeedOptions();
        if (options.Problem() is { } problem) throw new ArgumentException(problem, nameof(options));
        (this.pairs, this.validation, this.beta, microBatch, this.referenceIsAdapter) =
            (pairs, validation, beta, options.MicroBatchSize, referenceIsAdapter);
        reference = ReferenceLogProbs(pairs);
        validationReference = validation is null ? new double[0, 2] : ReferenceLogProbs(validation);
    }

    /// <summary>The reference's sequence log-probabilities of <paramref name="data"/>: [pair, 0] chosen, [pair, 1] rejected.</summary>
    double[,] ReferenceLogProbs(IReadOnlyList<PreferencePair> data) => WithoutTraining(() =>
    {
        var result = new double[data.Count, 2];
        if (!referenceIsAdapter) TrainableAdapter.Detach(Model);
        try
        {
            using var noGrad = no_grad();
            for (int start = 0; start < data.Count; start += Hp.BatchSize)
            {
                using var scope = NewDisposeScope();
                var (chosen, rejected) = LogProbs(data.Skip(start).Take(Hp.BatchSize).ToList());
                var (c, r) = (chosen.to_type(ScalarType.Float64).data<double>().ToArray(), rejected.to_type(ScalarType.Float64).data<double>().ToArray());
                for (int i = 0; i < c.Length; i++) (result[start + i, 0], result[start + i, 1]) = (c[i], r[i]);
            }
        }
        finally
        {
            if (!referenceIsAdapter) Adapter.Attach(Model);
        }
        return result;
    });

    /// <summary>
    /// The sequence log-probabilities [n] of each pair's chosen and rejected answer under the model as it is attached:
    /// the pairs' sequences as rows (chosen, rejected, chosen, …) of one padded batch, the head on the answer positions only.
    /// </summary>
    (Tensor Chosen, Tensor Rejected) LogProbs(IReadOnlyList<PreferencePair> part)
    {
        var rows = Rows(part);
        var (input, blocks, head) = Model.Chain(rows.Inputs, rows.Positions, rows.Mask);
        return PairLogProbs(head(blocks.Aggregate(input, (h, block) => block(h)).flatten(0, 1).index_select(0, rows.TrainedPositions)), rows);   // head on [n, hidden]
    }

    /// <summary>The pairs' sequences as rows (chosen, rejected, chosen, …) of one padded batch.</summary>
    static TokenRows Rows(IReadOnlyList<PreferencePair> part) =>
        TokenRows.Collate(part.SelectMany(p => new[] { p.Chosen, p.Rejected }).ToList(), padId: 0, pack: false);

    /// <summary>Each pair's chosen and rejected sequence log-probability [pairs] from the logits [n, vocab] at the trained positions of its <see cref="Rows"/>.</summary>
    static (Tensor Chosen, Tensor Rejected) PairLogProbs(Tensor logits, TokenRows rows)
    {
        var sequences = SequenceLogProbs(logits, rows).view(-1, 2);                                                                 // [pairs, 2]
        return (sequences[TensorIndex.Colon, 0], sequences[TensorIndex.Colon, 1]);
    }

    /// <summary>The DPO loss of the pairs <paramref name="indices"/> (the step's mean: its sum over <paramref name="pairsInStep"/>) against their reference log-probabilities.</summary>
    (Tensor Loss, Tensor ChosenReward, Tensor RejectedReward) Loss(Tensor policyChosen, Tensor policyRejected, IReadOnlyList<int> indices, int pairsInStep)
    {
        var (pairLoss, rc, rr) = DpoLoss.Of(policyChosen, policyRejected,
            tensor(indices.Select(i => (float)reference[i, 0]).ToArray()), tensor(indices.Select(i => (float)reference[i, 1]).ToArray()), beta);
        return (pairLoss.sum() / pairsInStep, rc, rr);
    }

    /// <summary>Per row of <paramref name="rows"/> (padded, one sequence a row), the sum of its trained targets' log-probabilities under <paramref name="logits"/> [n, vocab].</summary>
    internal static Tensor SequenceLogProbs(Tensor logits, TokenRows rows)
    {
        if (logits.dtype != ScalarType.Float32) logits = logits.to_type(ScalarType.Float32);
        var tokens = -nn.functional.cross_entropy(logits, rows.TrainedTargets, reduction: nn.Reduction.None);                      // [n]
        var rowOf = rows.TrainedPositions.div(rows.Inputs.shape[1], rounding_mode: RoundingMode.floor);
        return zeros(rows.Inputs.shape[0], dtype: ScalarType.Float32).index_add(0, rowOf, tokens, 1);
    }

    protected override double TrainStep(IReadOnlyList<int> batch)
    {
        var chosen = batch.Select(i => pairs[i]).ToList();
        int micro = microBatch ?? chosen.Count;
        double loss = 0;
        var rewards = new Rewards();
        for (int start = 0; start < chosen.Count; start += micro)
        {
            using var scope = NewDisposeScope();                                   // frees a micro-batch's activations before the next
            var part = chosen.Skip(start).Take(micro).ToList();
            var (policyChosen, policyRejected) = LogProbs(part);
            var indices = batch.Skip(start).Take(micro).ToList();
            var (partLoss, rc, rr) = Loss(policyChosen, policyRejected, indices, chosen.Count);   // the step's loss is the mean over all its pairs
            Backward(partLoss, auxiliaryWeight: part.Count / (double)chosen.Count);
            loss += partLoss.item<float>();
            rewards.Add(rc, rr);
        }
        OptimizerStep(loss, Tokens(chosen));
        return rewards.Report(out lastMetrics);
    }

    static long Tokens(IReadOnlyList<PreferencePair> pairs) => pairs.Sum(p => p.Chosen.Ids.Length + p.Rejected.Ids.Length - 2L);

    /// <summary>A fused step's part: all the step's pairs as rows of one piece, the DPO loss of their logits.</summary>
    internal override FusedPart Prepare(IReadOnlyList<int> batch)
    {
        var chosen = batch.Select(i => pairs[i]).ToList();
        var rows = Rows(chosen);
        var rewards = new Rewards();
        return new(rows, Tokens(chosen), logits =>
        {
            var (policyChosen, policyRejected) = PairLogProbs(logits, rows);
            var (loss, rc, rr) = Loss(policyChosen, policyRejected, batch, chosen.Count);
            rewards.Add(rc, rr);
            return (loss, 1);
        }, () => rewards.Report(out lastMetrics));
    }

    /// <summary>A step's implicit rewards, summed over its pairs as they come (micro-batch by micro-batch).</summary>
    sealed class Rewards
    {
        double margin, chosen, rejected;
        long right, count;

        public void Add(Tensor rc, Tensor rr)
        {
            right += rc.gt(rr).sum().item<long>();
            margin += (rc - rr).sum().item<float>();
            chosen += rc.sum().item<float>();
            rejected += rr.sum().item<float>();
            count += rc.shape[0];
        }

        /// <summary>The step's metrics (means over its pairs); returns the preference accuracy.</summary>
        public double Report(out Dictionary<string, double> metrics)
        {
            double n = Math.Max(1, count);
            metrics = new()
            {
                ["reward_margin"] = margin / n, ["preference_accuracy"] = right / n,
                ["chosen_reward"] = chosen / n, ["rejected_reward"] = rejected / n,
            };
            return right / n;
        }
    }

    protected override IReadOnlyDictionary<string, double>? StepMetrics => lastMetrics;

    /// <summary>The validation pairs' mean DPO loss and preference accuracy (against their reference), without training.</summary>
    public (double Loss, double Accuracy) Evaluate() => WithoutTraining(() =>
    {
        if (validation is null) throw new InvalidOperationException("no validation pairs");
        AttachAlone();                                                             // the model may be shared by a fused run
        double loss = 0;
        long right = 0;
        using var noGrad = no_grad();
        for (int start = 0; start < validation.Count; start += Hp.BatchSize)
        {
            using var scope = NewDisposeScope();
            var part = validation.Skip(start).Take(Hp.BatchSize).ToList();
            var (policyChosen, policyRejected) = LogProbs(part);
            var range = Enumerable.Range(start, part.Count).ToList();
            var (pairLoss, rc, rr) = DpoLoss.Of(policyChosen, policyRejected,
                tensor(range.Select(i => (float)validationReference[i, 0]).ToArray()), tensor(range.Select(i => (float)validationReference[i, 1]).ToArray()), beta);
            loss += pairLoss.sum().item<float>();
            right += rc.gt(rr).sum().item<long>();
        }
        return (loss / validation.Count, right / (double)validation.Count);
    });
}
