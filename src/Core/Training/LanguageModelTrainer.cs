using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>Token ids of one example and, per id, whether the loss is taken on it.</summary>
public sealed record TokenizedExample(int[] Ids, bool[] Train);

/// <summary>
/// Supervised fine-tuning of an adapter of any method on a frozen causal language model: cross-entropy on the next token
/// where the target is an assistant/completion token (the loop, optimizer and state are <see cref="AdapterTrainer"/>'s).
/// How a step is computed (packing, micro-batches, checkpointing) follows <see cref="TrainingSpeedOptions"/>, the base's
/// matmuls run in the type its weights were loaded in (<see cref="Models.BasePrecision"/>); the loss of a step is always the
/// mean over the batch's trained tokens, in float32.
/// </summary>
public sealed class LanguageModelTrainer : FusableTrainer
{
    readonly IReadOnlyList<TokenizedExample> examples;
    readonly int padId;
    readonly TrainingSpeedOptions options;
    readonly bool packing, checkpointing;

    public LanguageModelTrainer(CausalLanguageModel model, TrainableAdapter adapter, IReadOnlyList<TokenizedExample> examples, Hyperparameters hp, int padId, long seed,
        TrainingSpeedOptions? options = null)
        : base(model, adapter, examples.Count, hp, seed)
    {
        this.options = options ?? new TrainingSpeedOptions();
        if (this.options.Problem() is { } problem) throw new ArgumentException(problem, nameof(options));
        (this.examples, this.padId) = (examples, padId);
        (packing, checkpointing) = (this.options.Packing && adapter.TokenWise, this.options.GradientCheckpointing && adapter.TokenWise);
    }

    /// <summary>Mean loss and next-token accuracy over the trained tokens of <paramref name="data"/>, without training.</summary>
    public (double Loss, double Accuracy) Evaluate(IReadOnlyList<TokenizedExample> data) => WithoutTraining(() =>
    {
        AttachAlone();                                                                         // the model may be shared by a fused run
        double lossSum = 0;
        long correct = 0, count = 0;
        using var noGrad = no_grad();
        for (int start = 0; start < data.Count; start += Hp.BatchSize)
        {
            using var scope = NewDisposeScope();
            var rows = TokenRows.Collate(data.Skip(start).Take(Hp.BatchSize).ToList(), padId, packing);
            var (input, blocks, head) = Model.Chain(rows.Inputs, rows.Positions, rows.Mask);
            var (loss, right) = Loss(blocks.Aggregate(input, (h, block) => block(h)), head, rows, divisor: 1);
            lossSum += loss.item<float>();
            correct += right.item<long>();
            count += rows.TrainedTargets.shape[0];
        }
        return (lossSum / Math.Max(1, count), correct / (double)Math.Max(1, count));
    });

    protected override double TrainStep(IReadOnlyList<int> batch)
    {
        var chosen = batch.Select(i => examples[i]).ToList();
        var (loss, accuracy) = Backpropagate(chosen);
        OptimizerStep(loss, chosen.Sum(e => e.Ids.Length - 1L));
        return accuracy;
    }

    /// <summary>A whole step's rows in one piece; its loss is the mean cross-entropy over their trained tokens.</summary>
    internal override FusedPart Prepare(IReadOnlyList<int> batch)
    {
        var chosen = batch.Select(i => examples[i]).ToList();
        var rows = TokenRows.Collate(chosen, padId, packing);
        long trained = Math.Max(1, chosen.Sum(TokenRows.Trained));
        Tensor? correct = null;
        return new(rows, chosen.Sum(e => e.Ids.Length - 1L), logits =>
        {
            (var loss, correct) = LossOfLogits(logits, rows, trained);
            return (loss, 1);
        }, () => correct!.item<long>() / (double)trained);
    }

    /// <summary>
    /// The loss of <paramref name="batch"/> (the mean over its trained tokens) and its next-token accuracy; adds the loss's
    /// gradient to the adapter's parameters (in micro-batches when <see cref="TrainingSpeedOptions.MicroBatchSize"/> says so).
    /// </summary>
    public (double Loss, double Accuracy) Backpropagate(IReadOnlyList<TokenizedExample> batch)
    {
        // The loss is the mean over all the batch's trained tokens, so each micro-batch divides its sum by the batch's count.
        long trained = Math.Max(1, batch.Sum(TokenRows.Trained));
        int micro = options.MicroBatchSize ?? batch.Count;
        double loss = 0;
        long correct = 0;
        for (int start = 0; start < batch.Count; start += micro)
        {
            using var scope = NewDisposeScope();                                   // frees a micro-batch's activations before the next
            var part = batch.Skip(start).Take(micro).ToList();
            var rows = TokenRows.Collate(part, padId, packing);
            double share = part.Count / (double)batch.Count;                       // of the method's auxiliary loss
            var (partLoss, right) = checkpointing ? CheckpointedBackward(rows, trained, share) : Backward(rows, trained, share);
            loss += partLoss;
            correct += right;
        }
        return (loss, correct / (double)trained);
    }

    (double Loss, long Correct) Backward(TokenRows rows, long divisor, double auxiliaryWeight)
    {
        var (input, blocks, head) = Model.Chain(rows.Inputs, rows.Positions, rows.Mask);
        var (loss, correct) = Loss(blocks.Aggregate(input, (h, block) => block(h)), head, rows, divisor);
        Backward(loss, auxiliaryWeight);
        return (loss.item<float>(), correct.item<long>());
    }

    /// <summary>
    /// Gradient checkpointing: a forward pass without autograd keeps each block's input; the backward pass then recomputes
    /// one block at a time from its input (with the dropout generator as it was) and back-propagates through it alone.
    /// </summary>
    (double Loss, long Correct) CheckpointedBackward(TokenRows rows, long divisor, double auxiliaryWeight)
    {
        var (input, blocks, head) = Model.Chain(rows.Inputs, rows.Positions, rows.Mask);
        var inputs = new List<Tensor> { input };                                      // inputs[i] goes into blocks[i]; the last, into the head
        var dropoutStates = new List<Tensor>();
        using (no_grad())
            foreach (var block in blocks)
            {
                dropoutStates.Add(Dropout.get_state());
                using var scope = NewDisposeScope();                                   // frees the block's intermediates now
                inputs.Add(block(inputs[^1]).MoveToOuterDisposeScope());
            }

        Tensor gradient;
        double loss;
        long correct;
        using (var scope = NewDisposeScope())
        {
            var top = inputs[^1].detach().requires_grad_();
            var (lossTensor, right) = Loss(top, head, rows, divisor);
            Backward(lossTensor, auxiliaryWeight);
            (loss, correct) = (lossTensor.item<float>(), right.item<long>());
            gradient = (top.grad ?? zeros_like(top)).MoveToOuterDisposeScope();
        }
        for (int i = blocks.Count - 1; i >= 0; i--)
        {
            using var scope = NewDisposeScope();
            Dropout.set_state(dropoutStates[i]);
            var x = inputs[i].detach().requires_grad_(i > 0);                          // the embeddings need no gradient
            blocks[i](x).backward([gradient]);
            if (i > 0) gradient = (x.grad ?? zeros_like(x)).MoveToOuterDisposeScope();
        }
        return (loss, correct);
    }

    /// <summary>
    /// The summed cross-entropy over the trained targets divided by <paramref name="divisor"/>, and how many were predicted
    /// right. The head (norm and output projection, per token) runs on the trained positions only: the others' logits,
    /// over a vocabulary of tens of thousands, would be computed and thrown away.
    /// </summary>
    static (Tensor Loss, Tensor Correct) Loss(Tensor hidden, Func<Tensor, Tensor> head, TokenRows rows, long divisor) =>
        LossOfLogits(head(hidden.flatten(0, 1).index_select(0, rows.TrainedPositions)), rows, divisor);   // head on [n, hidden]

    /// <summary>The loss and right predictions of <paramref name="logits"/> [n, vocab] at the trained positions of <paramref name="rows"/>.</summary>
    internal static (Tensor Loss, Tensor Correct) LossOfLogits(Tensor logits, TokenRows rows, long divisor)
    {
        if (logits.dtype != ScalarType.Float32) logits = logits.to_type(ScalarType.Float32);
        var loss = nn.functional.cross_entropy(logits, rows.TrainedTargets, reduction: nn.Reduction.Sum) / divisor;
        Tensor correct;
        using (no_grad()) correct = logits.argmax(-1).eq(rows.TrainedTargets).sum();
        return (loss, correct);
    }
}
