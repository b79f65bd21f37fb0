// Serving benchmarks. Every figure is a ratio (or a latency) of measurements taken side by side in this one run,
// so a shared, noisy machine moves both sides alike. Usage:
//   dotnet run -c Release --project benchmarks [-- --quick]
// Writes the report to stdout and to benchmarks/results/latest.md.
//   dotnet run -c Release --project benchmarks -- --vision [--quick]
// runs only the built-in ViT's transfer benchmark (needs dataset-fashion-mnist) and writes benchmarks/results/vision.md.
//   dotnet run -c Release --project benchmarks -- --language-model [--quick]
// pre-trains the built-in language model with its default settings (needs fortunes), reports the loss curve and sample
// generations, and writes benchmarks/results/language-model.md.
//   dotnet run -c Release --project benchmarks -- --fusion [--quick]
// runs only the fused-training benchmark (4 LoRA jobs fused vs one after another vs separate copies) and writes
// benchmarks/results/fusion.md.
//   dotnet run -c Release --project benchmarks -- --training [--quick] [--profile] [--threads N]
// runs only the single-job training-speed benchmark (--profile: only where a step's time goes) and writes benchmarks/results/training.md.
//   dotnet run -c Release --project benchmarks -- --constrained [--quick]
// runs only constrained (json_schema) vs free decoding through the engine and the mask's cost on Qwen 3's
// vocabulary, and writes benchmarks/results/constrained.md.
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
    new VisionTransfer(quick).Run(Line);
    Save("vision.md");
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
    Line($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, torch threads {get_num_threads()}, load average {File.ReadAllText("/proc/loadavg").Split(' ')[0]}");
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
if (args.Contains("--constrained"))
{
    Line($"# Constrained decoding benchmark ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
    Line($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, torch threads {get_num_threads()}");
    Line("");
    await new ConstrainedDecoding(quick).RunAsync(Line);
    Save("constrained.md");
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
    new TrainingSpeed(quick, args.Contains("--profile")).Run(Line);
    Save("training.md");
    return;
}

Line($"# Serving benchmarks ({DateTime.UtcNow:yyyy-MM-dd HH:mm} UTC)");
Line($"machine: {Environment.ProcessorCount} cores, {Environment.OSVersion}, torch threads {get_num_threads()}");
double peak = Measure.MatmulPeakGflops();
Line($"fp32 matmul peak (2048x2048, measured now): {peak:F0} GFLOP/s");
Line("");

using (var lora = new LoraServing(quick)) lora.Run(Line, peak);
Line("");
using (var methods = new MethodServing(quick)) methods.Run(Line);
Line("");
await new CacheServing(quick).RunAsync(Line);
Line("");
await new Latency(quick).RunAsync(Line);

Save("latest.md");

void Save(string name)
{
    var output = Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "results");
    Directory.CreateDirectory(output);
    File.WriteAllText(Path.Combine(output, name), report.ToString());
}
