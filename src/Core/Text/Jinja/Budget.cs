using System.Diagnostics;

namespace AdapterService.Core.Text.Jinja;

/// <summary>One render's allowance of steps, string length, call depth and wall time; exceeding any is a JinjaException.</summary>
sealed class Budget(JinjaRenderOptions options)
{
    readonly long started = Stopwatch.GetTimestamp();
    readonly TimeSpan timeout = options.Timeout ?? TimeSpan.FromSeconds(5);
    long steps;
    int depth;

    public JinjaRenderOptions Options { get; } = options;
    public TimeProvider Clock => Options.Clock ?? TimeProvider.System;

    /// <summary>Charges <paramref name="count"/> steps before the work is done, so a huge range is refused before it is built.</summary>
    public void Step(long count = 1)
    {
        steps += count;
        if (steps > Options.MaxSteps)
            throw new JinjaException($"template exceeded {Options.MaxSteps} steps (loop iterations, calls, filters, list items)");
        if (Stopwatch.GetElapsedTime(started) > timeout)
            throw new JinjaException($"template rendering took longer than {timeout.TotalSeconds:0.###} s");
    }

    /// <summary>Checks a string's length before it is built.</summary>
    public void CheckLength(long length)
    {
        if (length > Options.MaxOutputChars)
            throw new JinjaException($"template output or string exceeded {Options.MaxOutputChars} characters");
    }

    /// <summary>Checks a list's length before it is built: no list may have more items than the output may have characters.</summary>
    public void CheckItems(long count)
    {
        if (count > Options.MaxOutputChars)
            throw new JinjaException($"template built a list of more than {Options.MaxOutputChars} items");
        Step(count);
    }

    public void Enter()
    {
        if (++depth > Options.MaxCallDepth)
            throw new JinjaException($"macro calls nested more than {Options.MaxCallDepth} deep");
    }

    public void Leave() => depth--;
}
