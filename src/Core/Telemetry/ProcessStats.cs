namespace AdapterService.Core.Telemetry;

/// <summary>
/// The process a job trains in, as its progress reports it: CPU time used since the previous report over the wall time
/// between them (100 = one core busy the whole time, up to <see cref="CpuCount"/> × 100), resident memory (TorchSharp's
/// native tensors included) and the managed heap. Several jobs trained together in one process report the same process.
/// </summary>
public sealed record WorkerStats(double CpuPercent, int CpuCount, long MemoryBytes, long ManagedBytes);

/// <summary>Samples <see cref="WorkerStats"/>: two counters the runtime keeps (no /proc scan, no Process object), cheap enough for every step.</summary>
public sealed class ProcessSampler
{
    TimeSpan lastCpu = Environment.CpuUsage.TotalTime;
    long lastTicks = Environment.TickCount64;

    public WorkerStats Sample()
    {
        var cpu = Environment.CpuUsage.TotalTime;
        long now = Environment.TickCount64;
        double wall = Math.Max(now - lastTicks, 1);
        double percent = (cpu - lastCpu).TotalMilliseconds / wall * 100;
        (lastCpu, lastTicks) = (cpu, now);
        return new WorkerStats(Math.Round(percent, 1), Environment.ProcessorCount, Environment.WorkingSet, GC.GetTotalMemory(forceFullCollection: false));
    }
}
