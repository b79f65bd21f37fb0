using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>
/// A micro-batch as model input: inputs are each example's ids[..^1] and targets its ids[1..] (ignored where not
/// trained). Padded: one example per row, right-padded, a causal mask. Packed: examples (longest first) fill rows of
/// the longest one's length first-fit; the mask is causal within each example only and positions restart at 0.
/// Shapes: Inputs, Targets, Positions [rows, t]; Mask [t, t] when padded, [rows, 1, t, t] when packed (true = attend);
/// TrainedPositions [n], the flat indices (row · t + position) of the n trained targets, and TrainedTargets [n], those targets.
/// </summary>
public sealed record TokenRows(Tensor Inputs, Tensor Targets, Tensor Positions, Tensor Mask, Tensor TrainedPositions, Tensor TrainedTargets)
{
    /// <summary>The target of a position the loss skips (cross-entropy's ignore index).</summary>
    public const long IgnoreIndex = -100;

    /// <summary>How many of the example's targets are trained on.</summary>
    public static long Trained(TokenizedExample e) => e.Train.Skip(1).Take(e.Ids.Length - 1).LongCount(t => t);

    /// <summary>The rows for <paramref name="batch"/>, packed or padded; padding ids are <paramref name="padId"/>.</summary>
    public static TokenRows Collate(IReadOnlyList<TokenizedExample> batch, int padId, bool pack)
    {
        int length = batch.Max(e => e.Ids.Length) - 1;
        var rows = new List<List<TokenizedExample>>();
        var free = new List<int>();
        foreach (var e in pack ? batch.OrderByDescending(e => e.Ids.Length) : batch.AsEnumerable())  // a stable sort: ties keep the batch order
        {
            int row = pack ? free.FindIndex(f => f >= e.Ids.Length - 1) : -1;
            if (row < 0) { rows.Add([]); free.Add(length); row = rows.Count - 1; }
            rows[row].Add(e);
            free[row] -= e.Ids.Length - 1;
        }
        var inputs = new long[rows.Count * length];
        var targets = new long[rows.Count * length];
        var positions = new long[rows.Count * length];
        var segments = new long[rows.Count * length];                               // which example of its row a position holds
        Array.Fill(inputs, padId);
        Array.Fill(targets, IgnoreIndex);
        Array.Fill(segments, -1);                                                   // padding: a segment of its own
        for (int r = 0; r < rows.Count; r++)
        {
            int at = r * length;
            for (int s = 0; s < rows[r].Count; s++)
            {
                var e = rows[r][s];
                for (int i = 0; i < e.Ids.Length - 1; i++, at++)
                {
                    (inputs[at], positions[at], segments[at]) = (e.Ids[i], i, s);
                    if (e.Train[i + 1]) targets[at] = e.Ids[i + 1];
                }
            }
            // Padding repeats the row's last position (never trained, never attended to), so the row's largest position is
            // its examples' own: dynamic NTK and LongRoPE scale by it.
            for (; at < (r + 1) * length; at++) positions[at] = positions[at - 1];
        }
        long[] shape = [rows.Count, length];
        var causal = ones(length, length, ScalarType.Bool).tril();                   // [t, t]
        var mask = pack
            ? tensor(segments, shape).unsqueeze(2).eq(tensor(segments, shape).unsqueeze(1)).logical_and(causal).unsqueeze(1)   // [rows, 1, t, t]
            : causal;
        var trained = Enumerable.Range(0, targets.Length).Where(i => targets[i] != IgnoreIndex).Select(i => (long)i).ToArray();
        return new TokenRows(tensor(inputs, shape), tensor(targets, shape), tensor(positions, shape), mask,
            tensor(trained), tensor(trained.Select(i => targets[i]).ToArray()));
    }
}
