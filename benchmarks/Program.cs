// Serving benchmarks. Every figure is a ratio (or a latency) of measurements taken side by side in this one run,
// so a shared, noisy machine moves both sides alike. Usage:
//   dotnet run -c Release --project benchmarks [-- --quick] [--lora] [--bf16] [--wide] [--methods] [--cache] [--constrained] [--latency] [--prefix] [--fairness]
// With no section switch every serving section runs and the report goes to stdout and benchmarks/results/latest.md;
// with one, only that section (benchmarks/results/<name>.md); with several, those (latest.md). --quick: a small model.
//   --lora         benchmarks 1-2: 32 rows over 32 adapters vs base, PEFT's mixed batch, each row alone, merging
//   --bf16         bf16 vs fp32 prefill and decode on benchmark 1's model, and 32 adapters vs base at each precision
//   --wide         32 adapters of rank 16 and 64 on all seven projections against a bytes-moved bound
//   --methods      benchmark 4: RLRR merged vs base, Lily vs LoRA
//   --cache        benchmark 3: 10,000 registered adapters through the adapter cache vs one adapter
//   --constrained  constrained (json_schema) vs free decoding through the engine, and the mask's cost on Qwen 3's vocabulary
//   --latency      benchmark 5: time to first token and between tokens at 1/8/32/64 streams
//   --prefix       32 requests sharing a 512-token system prompt, with and without a prefix cache
//   dotnet run -c Release --project benchmarks -- --vision [--quick] [--tuned]
// runs only the built-in ViT's transfer benchmark (needs dataset-fashion-mnist) and writes benchmarks/results/vision.md
// (--tuned: each method's learning rate chosen from 3 on a validation split first, benchmarks/results/vision-tuned.md).
//   dotnet run -c Release --project benchmarks -- --language-model [--quick]
// pre-trains the built-in language model with its default settings (needs fortunes), reports the loss curve and sample
// generations, and writes benchmarks/results/language-model.md.
//   dotnet run -c Release --project benchmarks -- --fusion [--quick]
// runs only the fused-training benchmark (4 LoRA jobs fused vs one after another vs separate copies) and writes
// benchmarks/results/fusion.md.
//   dotnet run -c Release --project benchmarks -- --training [--quick] [--profile] [--threads N]
// runs only the single-job training-speed benchmark (--profile: only where a step's time goes) and writes benchmarks/results/training.md.
//   dotnet run -c Release --project benchmarks -- --precision [--quick]
// load time and peak memory of bf16 folders (Qwen2.5-0.5B, Llama-3.2-1B, Llama-3.2-3B shapes, written once under
// /tmp/precision-benchmark), serving's peak memory, a LoRA job at 2,048 tokens/step, bf16 vs fp32 tokens/s; writes
// benchmarks/results/precision.md.
//   dotnet run -c Release --project benchmarks -- --tokenizers [--quick]
// runs only the tokenizer encode-speed comparison with Hugging Face's JavaScript tokenizers (needs tests/hf-reference
// installed and fortunes) and writes benchmarks/results/tokenizers.md.
using System.Diagnostics;
using System.Text;
using AdapterService.Benchmarks;
using AdapterService.Core.Torch;
using static TorchSharp.torch;

TorchRuntime.EnsureReady();
bool quick = args.Contains("--quick");
var report = new StringBuilder();
void Line(string text) { Console.WriteLine(text); report.AppendLine(text); }

if (args.Contains("--vision"))
{
    Line($"# Vision benchmark ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
    Line($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, torch threads {get_num_threads()}");
    Line("");
    bool tuned = args.Contains("--tuned");
    new VisionTransfer(quick, tuned).Run(Line);
    Save(tuned ? "vision-tuned.md" : "vision.md");
    return;
}

if (args.Contains("--language-model"))
{
    Line($"# Built-in language model pre-training ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
    Line($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, torch threads {get_num_threads()}");
    Line("");
    new LanguageModelRun(quick).Run(Line);
    Save("language-model.md");
    return;
}
if (args.Contains("--fusion-memory"))   // a child process of --fusion: one way's peak memory
{
    new FusedTraining(quick).MeasureMemory(args[Array.IndexOf(args, "--fusion-memory") + 1], Console.WriteLine);
    return;
}
if (args.Contains("--fusion"))
{
    Line($"# Fused training benchmark ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
    Line($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, torch threads {get_num_threads()}");
    Line("");
    new FusedTraining(quick).Run(Line);
    Save("fusion.md");
    return;
}
if (args.Contains("--precision-child"))   // a child process of --precision: one measurement
{
    PrecisionMemory.RunChild(args[(Array.IndexOf(args, "--precision-child") + 1)..].Where(a => a != "--quick").ToArray(), quick);
    return;
}
if (args.Contains("--precision"))
{
    Line($"# Base precision: memory and speed ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
    Line($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, torch threads {get_num_threads()}, load average {LoadAverage()}");
    Line("");
    new PrecisionMemory(quick).Run(Line);
    Save("precision.md");
    return;
}
if (args.Contains("--tokenizers"))
{
    Line($"# Tokenizer encode speed ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
    Line($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}");
    Line("");
    new TokenizerSpeed(quick).Run(Line);
    Save("tokenizers.md");
    return;
}
if (args.Contains("--training"))
{
    // --threads N: torch threads for the whole run. On a machine shared with other busy processes, 1 thread keeps the
    // training steps and the GEMM they are compared with from stalling at OpenMP barriers while a core is taken away.
    if (Array.IndexOf(args, "--threads") is var at and >= 0 && at + 1 < args.Length) set_num_threads(int.Parse(args[at + 1]));
    Line($"# Training benchmark ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
    Line($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, torch threads {get_num_threads()}");
    Line("");
    // --repeat N: the fp32 row alone N times, with both GEMM references and page faults (what section 6's MFU rests on).
    if (Array.IndexOf(args, "--repeat") is var rep and >= 0 && rep + 1 < args.Length)
        new TrainingSpeed(quick).Repeat(int.Parse(args[rep + 1]), Line);
    else
        new TrainingSpeed(quick, args.Contains("--profile")).Run(Line);
    Save("training.md");
    return;
}

// The serving sections by switch, in the order a full run takes them.
double? peak = null;
var serving = new (string Switch, Func<Task> Run)[]
{
    ("--lora", () => { using var b = new LoraServing(quick); b.Run(Line, peak ??= Measure.MatmulPeakGflops()); return Task.CompletedTask; }),
    ("--bf16", () => { new PrecisionServing(quick).Run(Line); return Task.CompletedTask; }),
    ("--wide", () => { new WideAdapters(quick).Run(Line); return Task.CompletedTask; }),
    ("--methods", () => { using var b = new MethodServing(quick); b.Run(Line); return Task.CompletedTask; }),
    ("--cache", () => new CacheServing(quick).RunAsync(Line)),
    ("--constrained", () => new ConstrainedDecoding(quick).RunAsync(Line)),
    ("--latency", () => new Latency(quick).RunAsync(Line)),
    ("--prefix", () => new PrefixSharing(quick).RunAsync(Line)),
    ("--fairness", () => new ProjectFairness(quick).RunAsync(Line)),
};
var chosen = serving.Where(s => args.Contains(s.Switch)).ToList();
if (chosen.Count == 0) chosen = [.. serving];
Line($"# Serving benchmarks ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC){(quick ? ", --quick" : "")}");
Line($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, torch threads {get_num_threads()}, load average at the start {LoadAverage()}");
if (chosen.Any(s => s.Switch == "--lora"))
{
    peak = Measure.MatmulPeakGflops();
    Line($"fp32 matmul peak (2048x2048, measured now): {peak:F0} GFLOP/s");
}
Line("");
foreach (var (name, run) in chosen)
{
    var clock = Stopwatch.StartNew();
    await run();
    Line($"({name} took {clock.Elapsed.TotalSeconds:F0} s; load average now {LoadAverage()})");
    Line("");
}
Save(chosen.Count == 1 ? $"{chosen[0].Switch[2..]}.md" : "latest.md");

// The 1-minute load average (Linux); the figures of a loaded machine are not comparable with a quiet one's.
static string LoadAverage() => File.Exists("/proc/loadavg") ? File.ReadAllText("/proc/loadavg").Split(' ')[0] : "n/a";

void Save(string name)
{
    var output = Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "results");
    Directory.CreateDirectory(output);
    File.WriteAllText(Path.Combine(output, name), report.ToString());
}
