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
        var batches = members.Select(m => m.Batch(m.BeginStep())).ToList();                   // [b_j, t_j] each; seeds each job's dropout
        long length = batches.Max(b => b.Inputs.shape[1]);
        var segments = batches.Select(b => new Segment(b.Inputs.shape[0], b.Inputs.shape[1])).ToList();
        // Right padding past a job's own length is never read by its tokens (causal attention) nor trained on.
        var fusedInputs = cat(batches.Select((b, j) => nn.functional.pad(b.Inputs, [0, length - b.Inputs.shape[1]], value: members[j].PadId)).ToArray(), 0);
        Install(model, members.Select(m => m.TrainedAdapter).ToList(), segments);
        var logits = model.forward(fusedInputs);                                                 // [Σ b_j, t, vocab]

        var logitRows = Segment.Split(segments, logits);
        var losses = new List<(int Member, Tensor Loss, Tensor Total, double Accuracy)>();
        for (int j = 0; j < members.Count; j++)
        {
            var s = segments[j];
            try
            {
                var (loss, accuracy) = LanguageModelTrainer.LossOf(s.Own(logitRows[j]), batches[j].Targets);
                losses.Add((j, loss, members[j].StepLoss(loss), accuracy));
            }
            catch (Exception e) when (e is not OutOfMemoryException)
            {
                outcomes[j] = new(null, e);
            }
        }
        if (losses.Count > 0)
        {
            foreach (var l in losses) members[l.Member].ZeroGradients();
            // Each job's parameters get the gradient of its own loss only: its layers touched its rows only.
            stack(losses.Select(l => l.Total).ToArray()).sum().backward();
            foreach (var (j, loss, _, accuracy) in losses)
            {
                members[j].ApplyGradients(loss, batches[j].Inputs.numel());
                outcomes[j] = new(members[j].EndStep(accuracy), null);
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
