using System.Diagnostics;
using System.Globalization;
using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Training;
using static TorchSharp.torch;

namespace AdapterService.Benchmarks;

/// <summary>
/// The base's precision (<c>Models:Precision</c>): load time and peak memory of bf16 folders shaped as Qwen2.5-0.5B,
/// Llama-3.2-1B and Llama-3.2-3B (random weights, written once to a temporary folder), serving's peak memory against
/// 1.3 × the weights + the KV cache + the idle process, a LoRA job at 2,048 tokens per step on the 0.5B shape (peak
/// memory, tokens/s, MFU), and bf16 against fp32 tokens/s for training and decoding on one model, round-robin in one
/// process. Every memory figure comes from a child process of its own (/proc/self/status VmHWM: a peak cannot be reset).
/// </summary>
sealed class PrecisionMemory(bool quick)
{
    static readonly string Root = Path.Combine(Path.GetTempPath(), "precision-benchmark");
    const int Rank = 16, ServeSlots = 4, ServePrompt = 64, ServeNew = 16;
    static readonly List<string> Targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

    /// <summary>The shapes (context cut to 2,048 positions: the engine preallocates its KV cache over the whole context).</summary>
    static IReadOnlyList<(string Name, LlamaConfig Config)> Shapes(bool quick) => quick
        ? [("tiny-qwen2", new Qwen2Config { VocabSize = 4096, HiddenSize = 256, IntermediateSize = 704, NumHiddenLayers = 4, NumAttentionHeads = 4, NumKeyValueHeads = 2, MaxPositionEmbeddings = 2048, TieWordEmbeddings = true, TorchDtype = "bfloat16" })]
        : [
            ("Qwen2.5-0.5B", new Qwen2Config { VocabSize = 151936, HiddenSize = 896, IntermediateSize = 4864, NumHiddenLayers = 24, NumAttentionHeads = 14, NumKeyValueHeads = 2, MaxPositionEmbeddings = 2048, RopeTheta = 1e6, TieWordEmbeddings = true, TorchDtype = "bfloat16" }),
            ("Llama-3.2-1B", new LlamaConfig { VocabSize = 128256, HiddenSize = 2048, IntermediateSize = 8192, NumHiddenLayers = 16, NumAttentionHeads = 32, NumKeyValueHeads = 8, MaxPositionEmbeddings = 2048, RopeTheta = 5e5, TieWordEmbeddings = true, TorchDtype = "bfloat16" }),
            ("Llama-3.2-3B", new LlamaConfig { VocabSize = 128256, HiddenSize = 3072, IntermediateSize = 8192, NumHiddenLayers = 28, NumAttentionHeads = 24, NumKeyValueHeads = 8, MaxPositionEmbeddings = 2048, RopeTheta = 5e5, TieWordEmbeddings = true, TorchDtype = "bfloat16" }),
        ];

    static string FolderOf(string name) => Path.Combine(Root, name);

    public void Run(Action<string> line)
    {
        var shapes = Shapes(quick);
        line($"Models:Precision auto resolves to: {BasePrecision.Resolve("auto")}");
        line("");
        foreach (var (name, _) in shapes)
            if (!File.Exists(Path.Combine(FolderOf(name), ModelFolder.WeightsFile))) Child(["write", name]);

        line("### Load (bf16 folders; the file in the page cache, as after a first load)");
        line("");
        line("| shape | weights (file) | precision | load s | first forward s (8 tokens) | peak RSS over baseline | vs file |");
        line("|---|---:|---|---:|---:|---:|---:|");
        foreach (var (name, config) in shapes)
            foreach (string precision in name.Contains("3B") ? ["bf16"] : (string[])["bf16", "fp32"])
            {
                var r = Child(["load", name, precision]);
                double file = FileBytes(name);
                line($"| {name} | {file / 1e9:F2} GB | {precision} | {r["load_s"]:F2} | {r["forward_s"]:F2} | {r["peak_mb"] / 1e3:F2} GB | {r["peak_mb"] * 1e6 / file:F2}× |");
            }
        line("");

        line($"### Serving: {ServeSlots} requests at once ({ServePrompt}-token prompts, {ServeNew} new tokens), engine MaxBatch {ServeSlots}, bf16");
        line("");
        line("| shape | weights W | KV cache | idle process | peak RSS | allowed (1.3 W + KV + idle) | peak − idle − KV | target |");
        line("|---|---:|---:|---:|---:|---:|---:|---|");
        foreach (var (name, _) in shapes)
        {
            var r = Child(["serve", name]);
            double w = FileBytes(name) / 1e6, allowed = 1.3 * w + r["kv_mb"] + r["idle_mb"];
            line($"| {name} | {w / 1e3:F2} GB | {r["kv_mb"] / 1e3:F2} GB | {r["idle_mb"] / 1e3:F2} GB | {r["peak_mb"] / 1e3:F2} GB | {allowed / 1e3:F2} GB | {(r["peak_mb"] - r["idle_mb"] - r["kv_mb"]) / w:F2} W | {(r["peak_mb"] <= allowed ? "met" : "**missed**")} |");
        }
        line("");

        var (first, _) = shapes[0];
        int rows = quick ? 2 : 1, length = quick ? 256 : 2048;
        line($"### LoRA job on {first}: r={Rank} on every linear layer, {rows} × {length} = {rows * length} tokens per step, bf16 base, gradient checkpointing");
        line("");
        line("| run | peak RSS | target ≤ 6 GB | tokens/s | model GFLOP/s | MFU vs bf16 GEMM peak | MFU vs fp32 GEMM peak |");
        line("|---|---:|---|---:|---:|---:|---:|");
        var t = Child(["train", first, rows.ToString(CultureInfo.InvariantCulture), length.ToString(CultureInfo.InvariantCulture)]);
        line($"| {first}, bf16 | {t["peak_mb"] / 1e3:F2} GB | {(t["peak_mb"] <= 6000 ? "met" : "**missed**")} | {t["tokens_s"]:F1} | {t["gflops"]:F1} | {t["gflops"] / t["bf16_peak"]:P0} ({t["bf16_peak"]:F0} GFLOP/s) | {t["gflops"] / t["fp32_peak"]:P0} ({t["fp32_peak"]:F0} GFLOP/s) |");
        line("");

        int compareLength = quick ? 128 : 256;
        line($"### bf16 against fp32 on {first}, one process, round-robin (training: 1 × {compareLength} tokens per step, LoRA r={Rank}; decoding: batch 1, {ServeNew} tokens after a 32-token prompt)");
        line("");
        line("| | bf16 tokens/s | fp32 tokens/s | bf16 / fp32 |");
        line("|---|---:|---:|---:|");
        var c = Child(["compare", first, compareLength.ToString(CultureInfo.InvariantCulture)]);
        line($"| training | {c["train_bf16"]:F1} | {c["train_fp32"]:F1} | {c["train_bf16"] / c["train_fp32"]:F2}× |");
        line($"| decoding | {c["decode_bf16"]:F1} | {c["decode_fp32"]:F1} | {c["decode_bf16"] / c["decode_fp32"]:F2}× |");
        line($"| 2048² GEMM (GFLOP/s) | {c["gemm_bf16"]:F0} | {c["gemm_fp32"]:F0} | {c["gemm_bf16"] / c["gemm_fp32"]:F2}× |");
    }

    static double FileBytes(string name) => new FileInfo(Path.Combine(FolderOf(name), ModelFolder.WeightsFile)).Length;

    /// <summary>Runs one measurement in a child process; its last line is <c>key=value</c> pairs.</summary>
    static Dictionary<string, double> Child(string[] args)
    {
        var start = new ProcessStartInfo(Environment.ProcessPath!) { RedirectStandardOutput = true };
        foreach (var a in (string[])["--precision-child", .. args]) start.ArgumentList.Add(a);
        using var child = Process.Start(start)!;
        string output = child.StandardOutput.ReadToEnd();
        child.WaitForExit();
        if (child.ExitCode != 0) throw new InvalidOperationException($"precision child {string.Join(' ', args)} failed ({child.ExitCode}): {output}");
        return output.Trim().Split('\n')[^1].Split(' ', StringSplitOptions.RemoveEmptyEntries)
            .Select(kv => kv.Split('=')).ToDictionary(kv => kv[0], kv => double.Parse(kv[1], CultureInfo.InvariantCulture));
    }

    /// <summary>The child's side of <see cref="Child"/>.</summary>
    public static void RunChild(string[] args, bool quick)
    {
        var shape = Shapes(quick).Concat(Shapes(!quick)).First(s => s.Name == args[1]);
        string folder = FolderOf(shape.Name);
        string result = args[0] switch
        {
            "write" => Write(shape.Config, folder),
            "load" => Load(folder, BasePrecision.Resolve(args[2])),
            "serve" => Serve(folder).GetAwaiter().GetResult(),
            "train" => Train(folder, shape.Config, int.Parse(args[2], CultureInfo.InvariantCulture), int.Parse(args[3], CultureInfo.InvariantCulture),
                args.Length > 4 ? int.Parse(args[4], CultureInfo.InvariantCulture) : 3),
            "compare" => Compare(folder, shape.Config, int.Parse(args[2], CultureInfo.InvariantCulture)),
            _ => throw new ArgumentException(args[0]),
        };
        Console.WriteLine(result);
    }

    static string Pairs(params (string Key, double Value)[] pairs) =>
        string.Join(' ', pairs.Select(p => $"{p.Key}={p.Value.ToString("R", CultureInfo.InvariantCulture)}"));

    /// <summary>
    /// A bf16 folder with random weights (N(0, 0.02) matrices, unit norms, zero biases), streamed to the file one tensor at
    /// a time: the names and shapes come from a model whose (float32) storage is never touched.
    /// </summary>
    static string Write(LlamaConfig config, string folder)
    {
        List<(string Key, long[] Shape, bool Norm)> layout;
        using (var model = (LlamaForCausalLM)config.CreateModel())
        {
            var norms = model.NormLayers().Select(n => n.Path + ".weight").ToHashSet();
            layout = ((IHuggingFaceModel)model).CheckpointTensors().Select(t => (t.Key, t.Parameter.shape, norms.Contains(t.Key)))
                .OrderBy(t => t.Key, StringComparer.Ordinal).ToList();
        }
        var header = new System.Text.Json.Nodes.JsonObject { ["__metadata__"] = new System.Text.Json.Nodes.JsonObject { ["format"] = "pt" } };
        long offset = 0;
        foreach (var (key, shape, _) in layout)
        {
            long bytes = 2 * shape.Aggregate(1L, (a, b) => a * b);
            header[key] = new System.Text.Json.Nodes.JsonObject
            {
                ["dtype"] = "BF16", ["shape"] = new System.Text.Json.Nodes.JsonArray([.. shape.Select(d => (System.Text.Json.Nodes.JsonNode)d)]),
                ["data_offsets"] = new System.Text.Json.Nodes.JsonArray(offset, offset + bytes),
            };
            offset += bytes;
        }
        byte[] json = System.Text.Encoding.UTF8.GetBytes(header.ToJsonString());
        int padded = (json.Length + 7) / 8 * 8;
        Directory.CreateDirectory(folder);
        using (var file = File.Create(Path.Combine(folder, ModelFolder.WeightsFile)))
        {
            file.Write(BitConverter.GetBytes((ulong)padded));
            file.Write(json);
            for (int i = json.Length; i < padded; i++) file.WriteByte((byte)' ');
            using var g = new Generator(1);
            foreach (var (key, shape, norm) in layout)
            {
                using var scope = NewDisposeScope();
                var t = shape.Length == 1 ? (norm ? ones(shape, ScalarType.BFloat16) : zeros(shape, ScalarType.BFloat16))
                    : empty(shape, ScalarType.BFloat16).normal_(0, 0.02, g);
                t.WriteBytesToStream(file);
            }
        }
        config.Save(Path.Combine(folder, ModelFolder.ConfigFile));
        return Pairs(("bytes", FileBytes(Path.GetFileName(folder))));
    }

    static string Load(string folder, BasePrecision precision)
    {
        long baseline = Status("VmRSS");
        var clock = Stopwatch.StartNew();
        using var model = ModelFolder.Load<CausalLanguageModel>(folder, precision);
        double load = clock.Elapsed.TotalSeconds;
        clock.Restart();
        using (no_grad()) model.forward(arange(8L).unsqueeze(0)).Dispose();   // touches every weight once
        double forward = clock.Elapsed.TotalSeconds;
        return Pairs(("load_s", load), ("forward_s", forward), ("peak_mb", (Status("VmHWM") - baseline) / 1024.0));
    }

    static async Task<string> Serve(string folder)
    {
        using var engine = new InferenceEngine(new InferenceOptions { MaxBatch = ServeSlots }, BasePrecision.BFloat16);
        GC.Collect();
        double idle = Status("VmRSS") / 1024.0;
        var config = (LlamaConfig)ModelConfig.Load(Path.Combine(folder, ModelFolder.ConfigFile));
        double kv = 2.0 * config.NumHiddenLayers * ServeSlots * config.KeyValueHeads * config.MaxPositionEmbeddings * config.HeadDim * 4 / 1e6;
        var runs = Enumerable.Range(0, ServeSlots).Select(async s =>
        {
            var prompt = Enumerable.Range(0, ServePrompt).Select(i => (i * 31 + s * 7) % 1000 + 10).ToList();
            var request = new GenerationRequest("bench", folder, null, null, prompt, new SamplingOptions(ServeNew, 0), new IdTokenizer(config.VocabSize), EosIds: []);
            int tokens = 0;
            await foreach (var chunk in engine.Generate(request)) tokens = chunk.CompletionTokens;
            return tokens;
        });
        int generated = (await Task.WhenAll(runs)).Sum();
        return Pairs(("idle_mb", idle), ("kv_mb", kv), ("peak_mb", Status("VmHWM") / 1024.0), ("generated", generated));
    }

    /// <summary>A LoRA job's steps (the first a warm-up, so at least 2): peak RSS, tokens/s and model GFLOP/s against both GEMM peaks.</summary>
    static string Train(string folder, LlamaConfig config, int rows, int length, int steps)
    {
        long baseline = Status("VmRSS");
        double fp32Peak = Measure.MatmulPeakGflops(ScalarType.Float32, runs: 3), bf16Peak = Measure.MatmulPeakGflops(ScalarType.BFloat16, runs: 3);
        using var model = ModelFolder.Load<LlamaForCausalLM>(folder, BasePrecision.BFloat16);
        var data = Examples(rows, length + 1, config.VocabSize, seed: 3);
        using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = Rank, Alpha = 2 * Rank, TargetModules = Targets }, 5);
        using var trainer = new LanguageModelTrainer(model, adapter, data, new Hyperparameters(steps, rows, 1e-3), padId: 0, seed: 1,
            new TrainingSpeedOptions { GradientCheckpointing = true });
        var times = new List<double>();
        var clock = Stopwatch.StartNew();
        trainer.Run(_ => { times.Add(clock.Elapsed.TotalSeconds); clock.Restart(); }, CancellationToken.None);
        double seconds = times.Skip(1).Average(), tokens = rows * (double)length;
        double gflops = Flops(config, tokens, length) / seconds / 1e9;
        return Pairs(("peak_mb", Status("VmHWM") / 1024.0), ("baseline_mb", baseline / 1024.0), ("tokens_s", tokens / seconds), ("gflops", gflops),
            ("bf16_peak", bf16Peak), ("fp32_peak", fp32Peak));
    }

    /// <summary>Model FLOPs of a LoRA step (as benchmarks/TrainingSpeed.cs counts them): 4 per frozen weight and token (forward, input gradient), attention, LoRA's 6.</summary>
    static double Flops(LlamaConfig c, double tokens, int length)
    {
        double matmul = c.LinearShapes().Sum(s => (double)s.In * s.Out);
        double attention = 6.0 * c.HiddenSize * c.NumHiddenLayers * tokens * (length + 1);
        double lora = 6.0 * Rank * c.LinearShapes().Where(s => s.Path != "lm_head").Sum(s => (double)(s.In + s.Out)) * tokens;
        return 4 * matmul * tokens + attention + lora;
    }

    /// <summary>Training and decoding tokens/s of the bf16 and the fp32 model of one folder, round-robin.</summary>
    static string Compare(string folder, LlamaConfig config, int length)
    {
        using var bf16 = ModelFolder.Load<LlamaForCausalLM>(folder, BasePrecision.BFloat16);
        using var fp32 = ModelFolder.Load<LlamaForCausalLM>(folder, BasePrecision.Float32);
        var data = Examples(1, length + 1, config.VocabSize, seed: 4);
        var prompt = tensor(Enumerable.Range(0, 32).Select(i => (long)(i * 37 % 1000 + 10)).ToArray()).unsqueeze(0);
        double TrainStep(LlamaForCausalLM model)
        {
            using var scope = NewDisposeScope();
            using var adapter = LoraAdapter.Create(model, new LoraConfig { Rank = Rank, Alpha = 2 * Rank, TargetModules = Targets }, 5);
            using var trainer = new LanguageModelTrainer(model, adapter, data, new Hyperparameters(1, 1, 1e-3), padId: 0, seed: 1);
            var clock = Stopwatch.StartNew();
            trainer.Run(_ => { }, CancellationToken.None);
            double rate = length / clock.Elapsed.TotalSeconds;
            TrainableAdapter.Detach(model);   // the model's slots free for the next run
            return rate;
        }
        double Decode(LlamaForCausalLM model)
        {
            using var scope = NewDisposeScope();
            using var noGrad = no_grad();
            using var cache = new KvCache(model.NumLayers);
            var next = model.Forward(prompt, cache)[0, -1].argmax().reshape(1, 1);
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < ServeNew; i++) next = model.Forward(next, cache)[0, -1].argmax().reshape(1, 1);
            return ServeNew / clock.Elapsed.TotalSeconds;
        }
        Func<double>[] runs = [() => TrainStep(bf16), () => TrainStep(fp32), () => Decode(bf16), () => Decode(fp32),
            () => Measure.MatmulPeakGflops(ScalarType.BFloat16, runs: 3), () => Measure.MatmulPeakGflops(ScalarType.Float32, runs: 3)];
        foreach (var run in runs) run();   // warm-up
        var rates = runs.Select(_ => new List<double>()).ToArray();
        for (int round = 0; round < 3; round++)
            for (int i = 0; i < runs.Length; i++) rates[i].Add(runs[i]());
        double Median(List<double> v) => v.Order().ElementAt(v.Count / 2);
        return Pairs(("train_bf16", Median(rates[0])), ("train_fp32", Median(rates[1])), ("decode_bf16", Median(rates[2])), ("decode_fp32", Median(rates[3])),
            ("gemm_bf16", Median(rates[4])), ("gemm_fp32", Median(rates[5])));
    }

    static List<TokenizedExample> Examples(int count, int length, int vocab, int seed)
    {
        var random = new Random(seed);
        return Enumerable.Range(0, count).Select(_ =>
            new TokenizedExample(Enumerable.Range(0, length).Select(_ => random.Next(vocab)).ToArray(), Enumerable.Repeat(true, length).ToArray())).ToList();
    }

    /// <summary>Token ids as text ("17 4 …"), for a random model whose vocabulary has no tokenizer.</summary>
    sealed class IdTokenizer(int vocabulary) : Core.Text.ITextTokenizer
    {
        public IReadOnlyList<int> EosIds => [];
        public IReadOnlyList<int> Encode(string text, bool addSpecialTokens) => [.. text.Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse)];
        public string Decode(IReadOnlyList<int> ids, bool skipSpecialTokens) => string.Concat(ids.Select(i => $"{i} "));
        public string? IdToToken(int id) => id.ToString(CultureInfo.InvariantCulture);
        public int VocabularySize => vocabulary;
        public string? BosToken => null;
        public string? EosToken => null;
    }

    /// <summary>A /proc/self/status field in kB.</summary>
    static long Status(string field) =>
        long.Parse(File.ReadLines("/proc/self/status").First(l => l.StartsWith(field + ":", StringComparison.Ordinal)).Split(':')[1].Trim().Split(' ')[0]);
}
