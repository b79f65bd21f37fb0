using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>
/// What one member of a fused step came to: its progress, or the error that failed it (and it alone); <c>Alone</c>: it
/// stepped alone (the only member, or the fused pass threw and each member ran its step alone).
/// </summary>
public sealed record FusedStepOutcome(TrainingProgress? Progress, Exception? Error, bool Alone = false);

/// <summary>
/// A member's share of one fused step, made by <see cref="FusableTrainer.Prepare"/> after whatever it computes alone
/// (a reference pass, rollouts): its rows (null: nothing to train on this step), its token count, its loss of the logits
/// [n, vocab] at its rows' trained positions (with the weight of its method's auxiliary loss), and what it reports after
/// the optimizer step (its accuracy; metrics of its own).
/// </summary>
internal sealed record FusedPart(TokenRows? Rows, long Tokens, Func<Tensor, (Tensor Loss, double AuxiliaryWeight)> Loss, Func<double> Finish);

/// <summary>
/// A trainer of an adapter on a frozen causal language model whose steps can run in a fused group
/// (<see cref="FusedTrainer"/>): whatever its objective, a step is a forward pass over rows of tokens and a loss of the
/// logits at some of their positions, which is all a fused step needs to know. Each objective also keeps its own step
/// alone (<see cref="AdapterTrainer.Run"/>).
/// </summary>
public abstract class FusableTrainer : AdapterTrainer
{
    protected FusableTrainer(CausalLanguageModel model, TrainableAdapter adapter, int examples, Hyperparameters hp, long seed)
        : base(adapter, examples, hp, seed, Attached(model, adapter).Parameters()) => Model = model;

    static TrainableAdapter Attached(CausalLanguageModel model, TrainableAdapter adapter)
    {
        foreach (var p in model.parameters()) p.requires_grad = false;
        adapter.Attach(model);
        return adapter;
    }

    /// <summary>The frozen base it trains over (a fused group's, shared).</summary>
    public CausalLanguageModel Model { get; }

    internal TrainableAdapter TrainedAdapter => Adapter;
    internal Generator DropoutGenerator => Dropout;

    /// <summary>Empties the model's slots and puts this trainer's adapter in them (after a fused step filled them with everyone's).</summary>
    internal void AttachAlone()
    {
        TrainableAdapter.Detach(Model);
        Adapter.Attach(Model);
    }

    /// <summary>
    /// This step's part of a fused step over the examples <paramref name="batch"/> (after <see cref="AdapterTrainer.BeginStep"/>),
    /// the whole batch in one piece. It may run passes of its own first (it attaches what it needs; the fused step
    /// installs every member's adapter afterwards).
    /// </summary>
    internal abstract FusedPart Prepare(IReadOnlyList<int> batch);
}

/// <summary>
/// One training step of several <see cref="FusableTrainer"/>s (jobs, of any objective) over one shared frozen model: their
/// rows are concatenated, the base computes once per row, and in every adapter slot each job's contiguous rows go
/// through that job's own layer (<see cref="SegmentedLinear"/>, <see cref="SegmentedFeedForward"/>). Each job's loss
/// (its objective's: cross-entropy, DPO's, GRPO's) is taken on its own rows, the sum is back-propagated once, and each
/// job clips and steps its own optimizer. Rows never mix in a transformer (attention is within a row, everything else
/// per token), and each job's layer sees exactly the [rows, length] block it sees alone, so dropout masks, Lily's router
/// means and MixLoRA's routing and load-balance loss are those of the job alone: a fused job trains the adapter it would
/// train alone, up to float rounding of the base's matmuls over a differently shaped batch.
/// </summary>
/// <remarks>
/// Memory: a fused step keeps every job's activations for the backward pass. With <c>checkpointShare</c> &gt; 0 the first
/// that share of the decoder layers keep only their inputs and are recomputed one at a time in the backward pass (each
/// job's dropout generator rewound), which trades about that share of a forward pass for their activations; it applies
/// when every member's adapter is token-wise (<see cref="TrainableAdapter.TokenWise"/>), as a job's own checkpointing does.
/// Failure isolation: a job whose preparation throws or whose loss is not finite is left out of the backward pass and
/// failed; an exception in the fused pass (which cannot say whose rows caused it) makes this step run each job alone, so
/// only the job that throws alone fails. Callers run the members' <see cref="AdapterTrainer.BeginRun"/> once when they join.
/// </remarks>
public static class FusedTrainer
{
    /// <summary>
    /// The default share of decoder layers a fused step of several jobs recomputes in its backward pass
    /// (<c>Workers:FusedCheckpointing</c>): none. Recomputing costs that share of a forward pass per step, too much to be
    /// on by default; docs/BENCHMARKS.md section 7 measures the trade (about 0.75 meets the 1.5× memory target there).
    /// </summary>
    public const double DefaultCheckpointShare = 0;

    /// <summary>One step of every member (none finished); the model's slots are left empty.</summary>
    public static IReadOnlyList<FusedStepOutcome> Step(CausalLanguageModel model, IReadOnlyList<FusableTrainer> members, double checkpointShare = 0)
    {
        if (members.Any(m => m.Model != model)) throw new ArgumentException("every fused trainer must train over the same model instance");
        if (checkpointShare is < 0 or > 1) throw new ArgumentOutOfRangeException(nameof(checkpointShare), "the share of layers checkpointed is from 0 to 1");
        try
        {
            if (members.Count == 1) return [Alone(members[0])];
            try
            {
                return Fused(model, members, checkpointShare);
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                // Whose rows made the fused pass throw is unknown: this step runs each job alone, so only that job fails.
                return members.Select(Alone).ToList();
            }
        }
        finally
        {
            TrainableAdapter.Detach(model);
        }
    }

    static FusedStepOutcome Alone(FusableTrainer member)
    {
        try
        {
            member.AttachAlone();
            return new(member.StepAlone(), null, Alone: true);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return new(null, e, Alone: true);
        }
    }

    static List<FusedStepOutcome> Fused(CausalLanguageModel model, IReadOnlyList<FusableTrainer> members, double checkpointShare)
    {
        var outcomes = new FusedStepOutcome?[members.Count];
        using var scope = NewDisposeScope();
        var parts = new FusedPart?[members.Count];
        for (int j = 0; j < members.Count; j++)
            try
            {
                parts[j] = members[j].Prepare(members[j].BeginStep());                          // seeds the job's dropout, clears its gradients
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                outcomes[j] = new(null, e);                                                     // its own data, rollouts or grader failed
            }
        for (int j = 0; j < members.Count; j++)
            if (parts[j] is { Rows: null } empty) outcomes[j] = Finish(members[j], empty, 0);  // nothing to train on: a step without gradient
        var active = Enumerable.Range(0, members.Count).Where(j => parts[j]?.Rows is not null).ToList();
        if (active.Count == 0) return outcomes.Select(o => o!).ToList();

        var rowsOf = active.Select(j => parts[j]!.Rows!).ToList();
        long length = rowsOf.Max(r => r.Inputs.shape[1]);
        var segments = rowsOf.Select(r => new Segment(r.Inputs.shape[0], r.Inputs.shape[1])).ToList();
        // Each job's rows right-padded to the longest: its tokens never attend past their own length (its mask, causal or
        // packed, sits in the top-left block; the padding attends causally, so no attention row is empty) nor train there.
        Tensor Pad(Tensor rows, long value) => nn.functional.pad(rows, [0, length - rows.shape[1]], value: value);
        var inputs = cat(rowsOf.Select(r => Pad(r.Inputs, 0)).ToArray(), 0);
        var positions = cat(rowsOf.Select(r => Pad(r.Positions, 0)).ToArray(), 0);
        var causal = ones(length, length, ScalarType.Bool).tril();
        var mask = cat(rowsOf.Select((r, s) =>
        {
            var own = r.Mask.dim() == 2 ? r.Mask.expand(segments[s].Rows, 1, -1, -1) : r.Mask;  // [rows, 1, t_j, t_j]
            var full = causal.expand(segments[s].Rows, 1, -1, -1).clone();
            full[TensorIndex.Colon, TensorIndex.Colon, TensorIndex.Slice(0, segments[s].Length), TensorIndex.Slice(0, segments[s].Length)] = own;
            return full;
        }).ToArray(), 0);                                                                          // [Σ rows_j, 1, t, t]
        var stepping = active.Select(j => members[j]).ToList();
        Install(model, stepping.Select(m => m.TrainedAdapter).ToList(), segments);
        var (input, blocks, head) = model.Chain(inputs, positions, mask);

        // The first `checkpointed` layers run without autograd, keeping their inputs (and every job's dropout state).
        bool tokenWise = stepping.All(m => m.TrainedAdapter.TokenWise);
        int checkpointed = tokenWise ? (int)Math.Round(checkpointShare * blocks.Count) : 0;
        var kept = new List<Tensor> { input };
        var dropoutStates = new List<Tensor[]>();
        if (checkpointed > 0)
            using (no_grad())
                for (int i = 0; i < checkpointed; i++)
                {
                    dropoutStates.Add(stepping.Select(m => m.DropoutGenerator.get_state()).ToArray());
                    using var layer = NewDisposeScope();                                        // frees the layer's intermediates now
                    kept.Add(blocks[i](kept[^1]).MoveToOuterDisposeScope());
                }
        var resumed = checkpointed > 0 ? kept[^1].detach().requires_grad_() : input;
        // The other layers with autograd, each in a dispose scope that keeps its output only: what autograd saves for the
        // backward pass it holds itself, and the layer's other intermediates (a base projection's output before its
        // adapter's part is added, attention scores before softmax, …) are freed now instead of at the step's end.
        // Token-wise adapters keep nothing else of a forward pass; Lily's and MixLoRA's (router statistics, the
        // load-balance loss) live until the step's end.
        var hidden = resumed;
        for (int i = checkpointed; i < blocks.Count; i++)
        {
            if (!tokenWise)
            {
                hidden = blocks[i](hidden);
                continue;
            }
            using var layer = NewDisposeScope();
            hidden = blocks[i](hidden).MoveToOuterDisposeScope();
        }
        // The head over every position: its norm may be an adapted slot, whose segments are rows of [Σ rows_j, t, ..]
        // (alone, a job runs the head on its trained positions only; per token, the same numbers).
        var logits = Segment.Split(segments, head(hidden));                                        // [rows_j, t, vocab] each

        var losses = new List<(int Member, Tensor Loss, Tensor Total)>();
        for (int s = 0; s < active.Count; s++)
        {
            int j = active[s];
            var part = parts[j]!;
            try
            {
                var own = segments[s].Own(logits[s]).flatten(0, 1).index_select(0, part.Rows!.TrainedPositions);   // [n_j, vocab]
                var (loss, auxiliaryWeight) = part.Loss(own);
                losses.Add((j, loss, members[j].StepLoss(loss, auxiliaryWeight)));
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                outcomes[j] = new(null, e);
            }
        }
        if (losses.Count > 0)
        {
            // Each job's parameters get the gradient of its own loss only: its layers touched its rows only.
            stack(losses.Select(l => l.Total).ToArray()).sum().backward();
            if (checkpointed > 0)
            {
                var gradient = resumed.grad ?? zeros_like(resumed);
                for (int i = checkpointed - 1; i >= 0; i--)
                {
                    using var layer = NewDisposeScope();
                    foreach (var (member, state) in stepping.Zip(dropoutStates[i])) member.DropoutGenerator.set_state(state);
                    var x = kept[i].detach().requires_grad_(i > 0);                               // the embeddings need no gradient
                    blocks[i](x).backward([gradient]);
                    if (i > 0) gradient = (x.grad ?? zeros_like(x)).MoveToOuterDisposeScope();
                }
            }
            foreach (var (j, loss, _) in losses) outcomes[j] = Finish(members[j], parts[j]!, loss.item<float>());
        }
        return outcomes.Select(o => o!).ToList();
    }

    /// <summary>Steps the member's optimizer on its accumulated gradient and counts its step.</summary>
    static FusedStepOutcome Finish(FusableTrainer member, FusedPart part, double loss)
    {
        try
        {
            member.OptimizerStep(loss, part.Tokens);
            return new(member.EndStep(part.Finish()), null);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return new(null, e);                                                                // its own evaluation or metrics failed
        }
    }

    /// <summary>Fills every slot some member adapts with a segmented layer over the members' rows.</summary>
    static void Install(CausalLanguageModel model, IReadOnlyList<TrainableAdapter> adapters, IReadOnlyList<Segment> segments)
    {
        TrainableAdapter.Detach(model);
        var layerMaps = adapters.Select(a => a.Layers).ToList();
        foreach (var (path, set) in TrainableAdapter.Slots(model))
        {
            var parts = layerMaps.Select(l => l.GetValueOrDefault(path) as ILinearAdapter).ToList();
            if (parts.Any(p => p is not null)) set(new SegmentedLinear(segments, parts));
        }
        foreach (var (path, block) in model.FeedForwardBlocks())
        {
            var parts = layerMaps.Select(l => l.GetValueOrDefault(path) as IFeedForwardAdapter).ToList();
            if (parts.All(p => p is null)) continue;
            // A job without a block adapter here still has its own layers on the block's projections, which the block
            // adapter bypasses: the segmented block applies them itself.
            var projections = layerMaps.Select(l => (IReadOnlyDictionary<string, ILinearAdapter>)block.Projections
                .Where(p => l.GetValueOrDefault($"{path}.{p.Name}") is ILinearAdapter)
                .ToDictionary(p => p.Name, p => (ILinearAdapter)l[$"{path}.{p.Name}"])).ToList();
            block.Adapter = new SegmentedFeedForward(segments, parts, projections);
        }
    }
}

/// <summary>A job's rows in a fused batch (contiguous, in member order): <c>Rows</c> rows, of which the first <c>Length</c> positions are its own.</summary>
sealed record Segment(long Rows, long Length)
{
    /// <summary>
    /// Each job's rows of a fused tensor [B, t, ..], by one split: its backward is one concatenation, where a narrow per
    /// job would add a zero-filled full-size gradient per job and slot.
    /// </summary>
    public static Tensor[] Split(IReadOnlyList<Segment> segments, Tensor fused) => fused.split(segments.Select(s => s.Rows).ToArray(), 0);

    /// <summary>This job's block [rows, length, ..] of its rows [rows, t, ..].</summary>
    public Tensor Own(Tensor rows) => rows.shape[1] == Length ? rows : rows.narrow(1, 0, Length);

    /// <summary>This job's rows: its block <paramref name="own"/> [rows, length, ..], then the positions past its length from <paramref name="rows"/> [rows, t, ..].</summary>
    public Tensor Merge(Tensor own, Tensor rows) =>
        rows.shape[1] == Length ? own : cat([own, rows.narrow(1, Length, rows.shape[1] - Length)], 1);
}

/// <summary>A linear or norm slot of a fused batch: each job's rows through that job's layer (or unchanged where it has none).</summary>
sealed class SegmentedLinear(IReadOnlyList<Segment> segments, IReadOnlyList<ILinearAdapter?> layers) : ILinearAdapter
{
    public Tensor Forward(Tensor x, Tensor y)                                                   // x [B, t, in], y [B, t, out]
    {
        var xs = Segment.Split(segments, x);
        var ys = Segment.Split(segments, y);
        return cat(segments.Select((s, j) => layers[j] is { } layer
            ? s.Merge(layer.Forward(s.Own(xs[j]), s.Own(ys[j])), ys[j])
            : ys[j]).ToArray(), 0);
    }
}

/// <summary>
/// A feed-forward slot of a fused batch where some job replaces the block (MixLoRA): each job's rows through its own
/// block adapter, or through the frozen block with that job's own projection layers.
/// </summary>
sealed class SegmentedFeedForward(IReadOnlyList<Segment> segments, IReadOnlyList<IFeedForwardAdapter?> blocks,
    IReadOnlyList<IReadOnlyDictionary<string, ILinearAdapter>> projections) : IFeedForwardAdapter
{
    public Tensor Forward(Tensor x, IFeedForward block)                                         // x [B, t, hidden]
    {
        var xs = Segment.Split(segments, x);
        return cat(segments.Select((s, j) =>
        {
            var own = s.Own(xs[j]);
            var output = blocks[j] is { } adapter
                ? adapter.Forward(own, block)
                : block.Compute(own, (name, layer, input) =>
                {
                    var y = FeedForwards.Frozen(layer, input);
                    return projections[j].TryGetValue(name, out var l) ? l.Forward(input, y) : y;
                });
            return s.Merge(output, xs[j]);                                                      // padding positions: never read
        }).ToArray(), 0);
    }
}
