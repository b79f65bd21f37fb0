namespace AdapterService.Cli;

/// <summary>A series drawn with the eight block characters ▁…█, scaled from its minimum to its maximum.</summary>
public static class Sparkline
{
    const string Blocks = "▁▂▃▄▅▆▇█";

    /// <summary>At most <paramref name="width"/> characters: a longer series is averaged over equal runs of points.</summary>
    public static string Render(IReadOnlyList<double> values, int width)
    {
        var finite = values.Where(double.IsFinite).ToList();
        if (finite.Count == 0 || width <= 0) return "";
        int count = Math.Min(width, finite.Count);
        var points = new double[count];
        for (int i = 0; i < count; i++)
        {
            int from = i * finite.Count / count, to = (i + 1) * finite.Count / count;
            points[i] = finite.Skip(from).Take(to - from).Average();
        }
        double min = points.Min(), max = points.Max();
        var chars = points.Select(p => max > min ? Blocks[(int)Math.Round((p - min) / (max - min) * (Blocks.Length - 1))] : Blocks[Blocks.Length / 2]);
        return new string(chars.ToArray());
    }
}
