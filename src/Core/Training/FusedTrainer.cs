using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>What one member of a fused step came to: its progress, or the error that failed it (and it alone).</summary>
public sealed record FusedStepOutcome(TrainingProgress? Progress, Exception? Error);

/// <summary>
/// One training step of several <see cref="LanguageModelTrainer"/>s (jobs) over one shared frozen model: their
/// micro-batches are concatenated row-wise, the base computes once per row, and in every adapter slot each job's
/// contiguous rows go through that job's own layer (<see cref="SegmentedLinear"/>, <see cref="SegmentedFeedForward"/>).
/// Each job's loss is taken on its own rows, the sum is back-propagated once, and each job clips and steps its own
/// optimizer. Rows never mix in a transformer (attention is within a row, everything else per token), and each job's
/// layer sees exactly the [rows, length] block it sees alone, so dropout masks, Lily's router means and MixLoRA's routing
/// and load-balance loss are those of the job alone: a fused job trains the adapter it would train alone, up to float
/// rounding of the base's matmuls over a differently shaped batch.
/// </summary>
/// <remarks>
/// Failure isolation: a job whose loss is not finite is left out of the backward pass and failed; an exception in the
/// fused pass (which cannot say whose rows caused it) makes this step run each job alone, so only the job that throws
/// alone fails. Callers run the members' <see cref="AdapterTrainer.BeginRun"/> once when they join.
/// </remarks>
public static class FusedTrainer
{
    /// <summary>One step of every member (none finished); the model's slots are left empty.</summary>
    public static IReadOnlyList<FusedStepOutcome> Step(CausalLanguageModel model, IReadOnlyList<LanguageModelTrainer> members)
    {
        if (members.Any(m => m.Model != model)) throw new ArgumentException("every fused trainer must train over the same model instance");
        try
        {
            if (members.Count == 1) return [Alone(members[0])];
            try
            {
                return Fused(model, members);
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

    static FusedStepOutcome Alone(LanguageModelTrainer member)
    {
        try
        {
            member.AttachAlone();
            return new(member.StepAlone(), null);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            return new(null, e);
        }
    }

    static List<FusedStepOutcome> Fused(CausalLanguageModel model, IReadOnlyList<LanguageModelTrainer> members)
    {
        var outcomes = new FusedStepOutcome?[members.Count];
        using var scope = NewDisposeScope();
        var batches = members.Select(m => m.Batch(m.BeginStep())).ToList();                   // seeds each job's dropout, clears its gradients
        long length = batches.Max(b => b.Rows.Inputs.shape[1]);
        var segments = batches.Select(b => new Segment(b.Rows.Inputs.shape[0], b.Rows.Inputs.shape[1])).ToList();
        // Each job's rows right-padded to the longest: its tokens never attend past their own length (its mask, causal or
        // packed, sits in the top-left block; the padding attends causally, so no attention row is empty) nor train there.
        Tensor Pad(Tensor rows, long value) => nn.functional.pad(rows, [0, length - rows.shape[1]], value: value);
        var inputs = cat(batches.Select(b => Pad(b.Rows.Inputs, 0)).ToArray(), 0);
        var positions = cat(batches.Select(b => Pad(b.Rows.Positions, 0)).ToArray(), 0);
        var causal = ones(length, length, ScalarType.Bool).tril();
        var mask = cat(batches.Select((b, j) =>
        {
            var own = b.Rows.Mask.dim() == 2 ? b.Rows.Mask.expand(segments[j].Rows, 1, -1, -1) : b.Rows.Mask;   // [rows, 1, t_j, t_j]
            var full = causal.expand(segments[j].Rows, 1, -1, -1).clone();
            full[TensorIndex.Colon, TensorIndex.Colon, TensorIndex.Slice(0, segments[j].Length), TensorIndex.Slice(0, segments[j].Length)] = own;
            return full;
        }).ToArray(), 0);                                                                          // [Σ rows_j, 1, t, t]
        Install(model, members.Select(m => m.TrainedAdapter).ToList(), segments);
        var (input, blocks, head) = model.Chain(inputs, positions, mask);
        // The head over every position: its norm may be an adapted slot, whose segments are rows of [Σ rows_j, t, ..]
        // (alone, a job runs the head on its trained positions only; per token, the same numbers).
        var logits = Segment.Split(segments, head(blocks.Aggregate(input, (h, block) => block(h))));   // [rows_j, t, vocab] each

        var losses = new List<(int Member, Tensor Loss, Tensor Total, Tensor Correct)>();
        for (int j = 0; j < members.Count; j++)
        {
            var (rows, trained, _) = batches[j];
            try
            {
                var own = segments[j].Own(logits[j]).flatten(0, 1).index_select(0, rows.TrainedPositions);     // [n_j, vocab]
                var (loss, correct) = LanguageModelTrainer.LossOfLogits(own, rows, trained);
                losses.Add((j, loss, members[j].StepLoss(loss), correct));
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
            foreach (var (j, loss, _, correct) in losses)
            {
                members[j].OptimizerStep(loss.item<float>(), batches[j].Tokens);
                outcomes[j] = new(members[j].EndStep(correct.item<long>() / (double)batches[j].Trained), null);
            }
        }
        return outcomes.Select(o => o!).ToList();
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
