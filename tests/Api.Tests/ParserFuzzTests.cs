using System.IO.Compression;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text;
using AdapterService.Api.Apis;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Adapters;
using AdapterService.Core.Builtins;
using AdapterService.Core.Data;
using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using AdapterService.Core.Text;
using TorchSharp;
using Xunit.Abstractions;

namespace AdapterService.Api.Tests;

/// <summary>
/// Seeded mutation fuzzing of every parser that reads what users send: each mutated input is either accepted or
/// rejected with the parser's own exception types (which the API turns into 400s), never anything else.
/// </summary>
public sealed class ParserFuzzTests : IDisposable
{
    readonly TempFolder folder = new("adapter-service-fuzz-");
    static readonly (string Path, long In, long Out)[] Layers = [("model.layers.0.self_attn.q_proj", 8, 8), ("model.layers.0.self_attn.v_proj", 8, 4)];

    readonly ITestOutputHelper log;

    public ParserFuzzTests(ITestOutputHelper log)
    {
        this.log = log;
        TorchRuntime.EnsureReady();
    }

    public void Dispose() => folder.Dispose();

    /// <summary>How many times the default counts a run tries (FUZZ_SCALE=10 for a long local run; CI keeps 1).</summary>
    internal static int Scale => int.TryParse(Environment.GetEnvironmentVariable("FUZZ_SCALE"), out var n) && n > 0 ? n : 1;

    /// <summary>
    /// Runs <paramref name="count"/> × <see cref="Scale"/> mutations of the seeds on several threads at once, each with its
    /// own scratch folder; an exception outside <paramref name="allowed"/>, an input taking over 20 s or one allocating
    /// more than <paramref name="maxAllocated"/> bytes fails with the input (the mutations are made up front from the seed,
    /// so a failure reproduces with the same seed and index whatever the threads did).
    /// </summary>
    void Fuzz(int seed, int count, byte[][] seeds, Action<byte[], string> parse, Type[] allowed, long maxAllocated = 256L << 20, [System.Runtime.CompilerServices.CallerMemberName] string name = "")
    {
        var check = Directory.CreateDirectory(Path.Combine(folder.FullName, "seeds-" + Guid.NewGuid().ToString("N"))).FullName;
        foreach (var valid in seeds) parse(valid, check);   // every seed is valid: the mutations start from accepted inputs
        var mutator = new Mutator(seed);
        var inputs = Enumerable.Range(0, count * Scale).Select(i => mutator.Mutate(seeds[i % seeds.Length])).ToArray();
        int accepted = 0;
        var failures = new System.Collections.Concurrent.ConcurrentQueue<string>();
        var scratch = new System.Collections.Concurrent.ConcurrentBag<string>();
        Parallel.For(0, inputs.Length, new ParallelOptions { MaxDegreeOfParallelism = Threads }, () =>
        {
            var work = Directory.CreateDirectory(Path.Combine(folder.FullName, "work-" + Guid.NewGuid().ToString("N"))).FullName;
            scratch.Add(work);
            return work;
        }, (i, _, work) =>
        {
            var input = inputs[i];
            long before = GC.GetAllocatedBytesForCurrentThread();
            var clock = System.Diagnostics.Stopwatch.StartNew();
            try
            {
                parse(input, work);
                Interlocked.Increment(ref accepted);
            }
            catch (Exception e) when (allowed.Any(t => t.IsInstanceOfType(e))) { }
            catch (Exception e)
            {
                failures.Enqueue($"input {i} (seed {seed}) threw {e.GetType().Name}: {e.Message}\n{Convert.ToBase64String(input)}\n{e}");
            }
            long allocated = GC.GetAllocatedBytesForCurrentThread() - before;
            if (clock.Elapsed > TimeSpan.FromSeconds(20)) failures.Enqueue($"input {i} (seed {seed}) took {clock.Elapsed}\n{Convert.ToBase64String(input)}");
            if (allocated > maxAllocated) failures.Enqueue($"input {i} (seed {seed}) allocated {allocated >> 20} MiB\n{Convert.ToBase64String(input)}");
            return work;
        }, _ => { });
        log.WriteLine($"fuzz {name} seed {seed}: {inputs.Length} inputs on {Threads} threads, {accepted} accepted, {inputs.Length - accepted} rejected, {failures.Count} failures");
        Assert.True(failures.IsEmpty, failures.FirstOrDefault());
        Assert.InRange(accepted, 1, inputs.Length - 1);   // the mutations reach both sides: some inputs stay valid, some are rejected
    }

    const int Threads = 4;

    [Fact]
    public void TrainingFiles()
    {
        byte[][] seeds =
        [
            Encoding.UTF8.GetBytes(string.Join("\n",
                """{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello", "weight": 1}]}""",
                """{"messages": [{"role": "user", "content": [{"type": "text", "text": "Hi"}]}, {"role": "assistant", "content": "Yo"}]}""")),
            Encoding.UTF8.GetBytes("""{"prompt": "2+2=", "completion": "4"}""" + "\n" + """{"prompt": "", "completion": "x"}""" + "\n"),
        ];
        Fuzz(1, 4000, seeds, (input, _) => TrainingFile.Parse(new MemoryStream(input)), [typeof(TrainingFileException)]);
    }

    [Fact]
    public void SafeTensorsHeadersAndTensors()
    {
        var path = Path.Combine(folder.FullName, "t.safetensors");
        using (var scope = torch.NewDisposeScope())
            SafeTensors.Save(path, new Dictionary<string, torch.Tensor>
            {
                ["a"] = torch.arange(6, torch.float32).reshape(2, 3), ["b"] = torch.ones(4, torch.float16), ["c"] = torch.zeros(1, 2, torch.bfloat16),
            }, new Dictionary<string, string> { ["format"] = "pt" });
        byte[][] seeds = [File.ReadAllBytes(path)];
        Fuzz(2, 2000, seeds, (input, work) =>
        {
            var fuzzed = Path.Combine(work, "f.safetensors");
            File.WriteAllBytes(fuzzed, input);
            SafeTensors.ReadHeader(fuzzed);
        }, [typeof(SafeTensorsException)]);
        Fuzz(3, 600, seeds, (input, work) =>
        {
            var fuzzed = Path.Combine(work, "f.safetensors");
            File.WriteAllBytes(fuzzed, input);
            foreach (var t in SafeTensors.Load(fuzzed).Values) t.Dispose();
        }, [typeof(SafeTensorsException)]);
    }

    [Fact]
    public void AdapterFoldersAndZips()
    {
        var valid = Directory.CreateDirectory(Path.Combine(folder.FullName, "valid")).FullName;
        WriteAdapter(valid);
        byte[] config = File.ReadAllBytes(Path.Combine(valid, LoraConfig.FileName)), weights = File.ReadAllBytes(Path.Combine(valid, LoraAdapter.WeightsFileName));
        Type[] rejections = [typeof(InvalidDataException), typeof(IOException), typeof(JsonException)];   // what the import answers 400 for

        // adapter_config.json and adapter_model.safetensors, each mutated on its own.
        static void Load(byte[] configBytes, byte[] weightBytes, string fuzzed)
        {
            File.WriteAllBytes(Path.Combine(fuzzed, LoraConfig.FileName), configBytes);
            File.WriteAllBytes(Path.Combine(fuzzed, LoraAdapter.WeightsFileName), weightBytes);
            using (ServedAdapter.Load(fuzzed, Layers, [])) { }
        }
        Fuzz(4, 800, [config], (input, work) => Load(input, weights, work), rejections);
        Fuzz(5, 600, [weights], (input, work) => Load(config, input, work), rejections);

        // Whole zips, as /v1/adapters/import receives them.
        var zip = new MemoryStream();
        using (var archive = new ZipArchive(zip, ZipArchiveMode.Create, leaveOpen: true))
            foreach (var file in Directory.GetFiles(valid)) archive.CreateEntryFromFile(file, "adapter/" + Path.GetFileName(file), CompressionLevel.Fastest);
        Fuzz(7, 1200, [zip.ToArray()], (input, work) =>
        {
            var target = Directory.CreateDirectory(Path.Combine(work, "zip-" + Guid.NewGuid().ToString("N"))).FullName;
            string[] peft = [LoraConfig.FileName, LoraAdapter.WeightsFileName];
            SafeZip.Extract(new MemoryStream(input), target, maxBytes: 1 << 20, peft.Contains, peft);
            using (ServedAdapter.Load(target, Layers, [])) { }
        }, rejections);
    }

    [Fact]
    public void ModelConfigs()
    {
        var path = Path.Combine(folder.FullName, "config.json");
        BuiltinModels.TinyDemo.Config.Save(path);
        byte[][] seeds = [File.ReadAllBytes(path)];
        Fuzz(6, 1500, seeds, (input, work) =>
        {
            var fuzzed = Path.Combine(work, "config.json");
            File.WriteAllBytes(fuzzed, input);
            LlamaConfig.Load(fuzzed);
        }, [typeof(InvalidDataException), typeof(JsonException)]);
    }

    [Fact]
    public void PngsAndImageLines()
    {
        var pixels = Enumerable.Range(0, 28 * 28).Select(i => (byte)(i * 7)).ToArray();
        byte[] small = Png.EncodeGray(28, 28, pixels), wide = Png.EncodeGray(300, 2, new byte[600]);
        // A few KB that declare the largest side allowed: the decoder must refuse or decode it without more than its pixels.
        byte[] large = Png.EncodeGray(Png.MaxSide, 16, new byte[Png.MaxSide * 16]);
        Type[] rejections = [typeof(InvalidDataException)];
        Fuzz(8, 2500, [small, wide, large], (input, _) => Png.Validate(input), rejections, maxAllocated: 8L << 20);
        // Decoding holds the gray result (at most 4096² bytes, 16 MiB) and two rows; the API checks the header's size first.
        Fuzz(9, 1500, [small, wide, large], (input, _) => Png.Decode(input), rejections, maxAllocated: 20L << 20);

        // Image lines of a training file: the PNG inside mutated (and so re-encoded as valid base64), or the line's bytes.
        string Line(byte[] png, string label) => JsonSerializer.Serialize(new { image = Convert.ToBase64String(png), label });
        Fuzz(10, 1200, [small, wide], (input, _) => TrainingFile.Parse(new MemoryStream(Encoding.UTF8.GetBytes(Line(small, "a") + "\n" + Line(input, "b")))),
            [typeof(TrainingFileException)]);
        Fuzz(11, 1200, [Encoding.UTF8.GetBytes(Line(small, "shirt") + "\n" + Line(small, "boot"))], (input, _) => TrainingFile.Parse(new MemoryStream(input)),
            [typeof(TrainingFileException)]);
    }

    [Fact]
    public void TokenizerJsons()
    {
        string[] merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "Ġw o"];
        var vocab = "abcdefghijklmnopqrstuvwxyzĠ".Select(c => c.ToString()).Concat(merges.Select(m => m.Replace(" ", ""))).Distinct()
            .Select((t, i) => (t, i)).ToDictionary(p => p.t, p => p.i);
        var tokenizer = new
        {
            version = "1.0",
            added_tokens = new[] { new { id = vocab.Count, content = "<|end|>", single_word = false, lstrip = false, rstrip = false, normalized = false, special = true } },
            normalizer = (object?)null,
            pre_tokenizer = new { type = "ByteLevel", add_prefix_space = false, trim_offsets = true, use_regex = true },
            post_processor = (object?)null,
            decoder = new { type = "ByteLevel", add_prefix_space = true, trim_offsets = true, use_regex = true },
            model = new { type = "BPE", dropout = (object?)null, unk_token = (object?)null, fuse_unk = false, byte_fallback = false, vocab, merges },
        };
        byte[][] seeds = [JsonSerializer.SerializeToUtf8Bytes(tokenizer)];
        Fuzz(12, 1500, seeds, (input, work) =>
        {
            File.WriteAllText(Path.Combine(work, ModelFolder.ConfigFile), $$"""{"model_type": "llama", "eos_token_id": {{vocab.Count}}}""");
            File.WriteAllBytes(Path.Combine(work, HfTokenizer.TokenizerFile), input);
            var loaded = TextTokenizers.Read(work);
            loaded.Decode(loaded.Encode("hello world<|end|>", addSpecialTokens: true), skipSpecialTokens: false);
        }, [typeof(InvalidDataException), typeof(JsonException)]);
    }

    [Fact]
    public void ChatTemplates()
    {
        string[] templates =
        [
            "{% for m in messages %}{% if loop.first %}{{ bos_token }}{% endif %}{{ '<|' ~ m['role'] ~ '|>' ~ m.content | trim }}<|end|>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}",
            "{% set ns = namespace(n=0) %}{% for m in messages %}{% set ns.n = ns.n + 1 %}{% if m.role == 'system' %}{{ m.content | upper }}{% else %}{{ m.content[:10] }}{% endif %}{% endfor %}{{ ns.n }}{{ raise_exception('x') if ns.n > 9 }}",
            "{%- macro f(x, y=2) -%}{{ x * y }}{%- endmacro -%}{{ f(messages | length) }}{% for k, v in {'a': [1, 2, 3]} | dictsort %}{{ k }}{{ v | join(',') }}{% endfor %}{{ messages | tojson }}",
        ];
        var chat = ChatConversation.Of([("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello")]);
        var tokenizer = new ByteTokenizer();
        Fuzz(13, 2500, templates.Select(Encoding.UTF8.GetBytes).ToArray(), (input, _) =>
            ChatTemplate.Parse(Encoding.UTF8.GetString(input)).Render(chat, tokenizer, addGenerationPrompt: true), [typeof(ChatTemplateException)]);
    }

    /// <summary>A tiny Llama saved in shards (so with model.safetensors.index.json) and its files.</summary>
    static Dictionary<string, byte[]> ShardedModel(string target)
    {
        var config = (LlamaConfig)BuiltinModels.TinyDemo.Config with { HiddenSize = 16, IntermediateSize = 24, NumHiddenLayers = 2, NumAttentionHeads = 2, NumKeyValueHeads = 1 };
        using (var scope = torch.NewDisposeScope())
        using (var model = RandomModel.Create(config, 5))
            ModelFolder.Save(model, target, maxShardBytes: 8 << 10);
        return Directory.GetFiles(target).ToDictionary(f => Path.GetFileName(f), File.ReadAllBytes);
    }

    [Fact]
    public void ShardIndexes()
    {
        var files = ShardedModel(Directory.CreateDirectory(Path.Combine(folder.FullName, "sharded")).FullName);
        Assert.True(files.Count(f => f.Key.StartsWith("model-", StringComparison.Ordinal)) >= 2, string.Join(", ", files.Keys));
        // Metadata the loader ignores, so that some mutations leave a valid index (the weight_map's names must all match).
        var index = JsonNode.Parse(files[ModelFolder.IndexFile])!;
        index["metadata"] = new JsonObject { ["total_size"] = 1234, ["format"] = "pt", ["note"] = new string('n', 400) };
        Fuzz(14, 500, [Encoding.UTF8.GetBytes(index.ToJsonString())], (input, work) =>
        {
            foreach (var (name, bytes) in files) File.WriteAllBytes(Path.Combine(work, name), name == ModelFolder.IndexFile ? input : bytes);
            using (ModelFolder.Load(work)) { }
        }, [typeof(InvalidDataException), typeof(SafeTensorsException)]);
    }

    [Fact]
    public void BaseModelZips()
    {
        var files = ShardedModel(Directory.CreateDirectory(Path.Combine(folder.FullName, "base")).FullName);
        var zip = new MemoryStream();
        using (var archive = new ZipArchive(zip, ZipArchiveMode.Create, leaveOpen: true))
            foreach (var (name, bytes) in files)
                using (var entry = archive.CreateEntry("model/" + name, CompressionLevel.Fastest).Open()) entry.Write(bytes);
        var modelFile = new System.Text.RegularExpressions.Regex(@"^(config\.json|model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json)$");
        Fuzz(15, 600, [zip.ToArray()], (input, work) =>
        {
            var target = Directory.CreateDirectory(Path.Combine(work, "zip-" + Guid.NewGuid().ToString("N"))).FullName;
            SafeZip.Extract(new MemoryStream(input), target, maxBytes: 4 << 20, modelFile.IsMatch, [ModelFolder.ConfigFile]);
            using (ModelFolder.Load(target)) { }
            Directory.Delete(target, recursive: true);
        }, [typeof(InvalidDataException), typeof(IOException), typeof(JsonException), typeof(SafeTensorsException)]);
    }

    /// <summary>Found by the ×10 ModelConfigs run: a key escaping half a surrogate pair was an InvalidOperationException (a 500).</summary>
    [Fact]
    public void AConfigKeyWithAnUnpairedSurrogateIsRefusedByName()
    {
        var path = Path.Combine(folder.FullName, "config.json");
        // The fuzzer's input (seed 6, input 2491 of the ×10 run): model_type mangled, a key with "\ud800".
        File.WriteAllText(path, """{"vocab_size": 264, "hidden_size": 128, "hidden_act": "silu", "at\u0000": false, "m\ud800lp_bias": false, "model{}ype": "llama"}""");
        Assert.StartsWith("config.json: holds a key or string that is not valid Unicode text", Assert.Throws<InvalidDataException>(() => LlamaConfig.Load(path)).Message);
    }

    static void WriteAdapter(string target)
    {
        new LoraConfig { Rank = 2, Alpha = 4, TargetModules = ["q_proj", "v_proj"] }.Save(target);
        using var scope = torch.NewDisposeScope();
        var tensors = new Dictionary<string, torch.Tensor>();
        foreach (var (path, input, output) in Layers)
        {
            tensors[$"base_model.model.{path}.lora_A.weight"] = torch.randn(2, input);
            tensors[$"base_model.model.{path}.lora_B.weight"] = torch.randn(output, 2);
        }
        SafeTensors.Save(Path.Combine(target, LoraAdapter.WeightsFileName), tensors, new Dictionary<string, string> { ["format"] = "pt" });
    }
}
