using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using AdapterService.Core.Torch;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Inference;

/// <summary>The engine over a tiny base model saved to a folder, with random adapters: LoRA of different ranks and targets, DoRA, Lily, RLRR.</summary>
public sealed partial class InferenceEngineTests : IDisposable
{
    readonly DirectoryInfo root = Directory.CreateTempSubdirectory("engine-tests-");
    readonly string baseFolder;
    readonly string[] adapterFolders;

    public InferenceEngineTests()
    {
        TorchRuntime.EnsureReady();
        baseFolder = Path.Combine(root.FullName, "base");
        using var scope = NewDisposeScope();
        using var model = Create();
        ModelFolder.Save(model, baseFolder);
        AdapterConfig[] configs =
        [
            new LoraConfig { Rank = 2, Alpha = 8, TargetModules = ["all-linear"] },
            new LoraConfig { Rank = 5, Alpha = 8, TargetModules = ["q_proj", "v_proj"] },
            new LoraConfig { Rank = 8, Alpha = 8, TargetModules = ["down_proj", "lm_head"] },
            new LoraConfig { Rank = 11, Alpha = 8, TargetModules = ["o_proj"] },
            new LoraConfig { Rank = 4, Alpha = 8, TargetModules = ["q_proj", "down_proj"], UseDora = true },
            new LilyConfig { Rank = 4, NumExperts = 3, TargetModules = ["q_proj", "v_proj", "up_proj"] },
            new RlrrConfig { Rank = 2, TargetModules = ["all-linear"] },
            new MixLoraConfig { Rank = 3, NumExperts = 4, TopK = 2, TargetModules = ["q_proj", "v_proj"] },
            new LilyConfig { Rank = 3, NumExperts = 2, TargetModules = ["q_proj"] },   // its own state width on a layer the other Lily adapts too
        ];
        adapterFolders = configs.Select((config, i) =>
        {
            using var adapter = TrainableAdapter.Create(model, config, seed: i);
            Randomize(adapter, 100 + i);
            var folder = Path.Combine(root.FullName, $"adapter{i}");
            adapter.Save(folder);
            return folder;
        }).ToArray();
    }

    public void Dispose() => root.Delete(recursive: true);

    GenerationRequest Request(int? adapter, int promptSeed, int maxTokens = 12, double temperature = 0, long? seed = null)
    {
        var prompt = Ids(1, 3 + promptSeed % 5, promptSeed).data<long>().Select(i => (int)i).ToList();
        return new GenerationRequest("tiny", baseFolder, adapter is { } a ? $"adapter{a}" : null, adapter is { } b ? adapterFolders[b] : null,
            prompt, new SamplingOptions(maxTokens, temperature, Seed: seed));
    }

    /// <summary>Every chunk of a request, in order.</summary>
    static async Task<List<GenerationChunk>> ChunksAsync(InferenceEngine engine, GenerationRequest request)
    {
        var chunks = new List<GenerationChunk>();
        await foreach (var chunk in engine.Generate(request)) chunks.Add(chunk);
        return chunks;
    }

    /// <summary>Each choice's text, by index.</summary>
    static List<string> ChoiceTexts(List<GenerationChunk> chunks, int n) =>
        Enumerable.Range(0, n).Select(i => string.Concat(chunks.Where(c => c.Index == i).Select(c => c.Text))).ToList();

    static async Task<(string Text, string Finish)> RunAsync(InferenceEngine engine, GenerationRequest request)
    {
        var text = "";
        GenerationChunk? last = null;
        await foreach (var chunk in engine.Generate(request)) { text += chunk.Text; last = chunk; }
        return (text, last!.FinishReason!);
    }

    /// <summary>
    /// Greedy decoding the slow way: the whole sequence through the model at every step, no cache, adapter attached; OpenAI's
    /// penalties and logit bias applied in float64 to the argmax; <paramref name="logprobs"/> gets each step's raw log-softmax.
    /// </summary>
    static List<int> Reference(GenerationRequest request, List<double[]>? logprobs = null)
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load(request.BaseFolder);
        using var _ = no_grad();
        TrainableAdapter? adapter = null;
        if (request.AdapterFolder is { } folder)
        {
            adapter = TrainableAdapter.Create(model, AdapterConfig.Load(folder));
            adapter.LoadWeights(folder);
            adapter.Attach(model);
        }
        var ids = request.Prompt.Select(i => (long)i).ToList();
        var produced = new List<int>();
        for (int i = 0; i < request.Options.MaxTokens; i++)
        {
            var raw = model.forward(tensor(ids.ToArray(), [1, ids.Count]))[0, -1];
            logprobs?.Add(nn.functional.log_softmax(raw.to_type(ScalarType.Float64), 0).data<double>().ToArray());
            var l = raw.to_type(ScalarType.Float64).data<double>().ToArray();
            var o = request.Options;
            foreach (var t in produced.Distinct())
                l[t] -= o.FrequencyPenalty * produced.Count(p => p == t) + o.PresencePenalty;
            foreach (var (t, bias) in o.LogitBias ?? new Dictionary<int, double>()) l[t] += bias;
            int next = Array.IndexOf(l, l.Max());
            if (next == ByteTokenizer.End) break;
            produced.Add(next);
            ids.Add(next);
        }
        adapter?.Dispose();
        return produced;
    }

    static string Text(List<int> tokens) =>
        System.Text.Encoding.UTF8.GetString(tokens.Where(ByteTokenizer.IsByte).Select(t => (byte)t).ToArray());

    [Fact]
    public async Task AMixedBatchGivesEachRowWhatItGetsAloneAndWhatTheUncachedModelSays()
    {
        using var engine = new InferenceEngine(new InferenceOptions { MaxBatch = 8 });
        // Twenty requests in flight together: nine adapters of five methods, and no adapter; prompts of different lengths.
        var requests = Enumerable.Range(0, 20).Select(i => Request(i % 10 == 9 ? null : i % 10, promptSeed: i, maxTokens: 6 + i % 7)).ToList();
        var together = await Task.WhenAll(requests.Select(r => RunAsync(engine, r)));
        for (int i = 0; i < requests.Count; i++)
        {
            var alone = await RunAsync(engine, requests[i]);
            Assert.Equal(alone.Text, together[i].Text);
            Assert.Equal(Text(Reference(requests[i])), together[i].Text);
        }
        Assert.NotEqual(together[9].Text, Text(Reference(requests[9] with { Adapter = "adapter5", AdapterFolder = adapterFolders[5] })));   // adapters matter
    }

    /// <summary>
    /// The decoder families in a batch of prompts of different lengths (padded prefill, cached decoding): Mistral's window of
    /// 3 positions is shorter than every sequence, Qwen3's heads are normed, Qwen2 has biases, Gemma's local layers have windows of 3
    /// beside global layers and Gemma 2 soft-caps; each row is what the uncached model says.
    /// </summary>
    [Theory]
    [InlineData("mistral")]
    [InlineData("qwen3")]
    [InlineData("qwen2")]
    [InlineData("gemma2")]
    [InlineData("gemma3_text")]
    [InlineData("qwen3_moe")]
    public async Task EachDecoderFamilyGeneratesInABatchWhatTheUncachedModelSays(string family)
    {
        using var engine = new InferenceEngine(new InferenceOptions { MaxBatch = 4 });
        var (requests, together) = await SixPromptsTogether(engine, family);
        for (int i = 0; i < requests.Count; i++)
            Assert.Equal(Text(Reference(requests[i])), together[i].Text);
        Assert.True(together.Count(t => t.Text.Length >= 4) >= 3, "most rows generate past the window");
    }

    /// <summary>A random model of <paramref name="family"/> saved as a folder, and six prompts of different lengths run on it at once.</summary>
    async Task<(List<GenerationRequest> Requests, (string Text, string Finish)[] Together)> SixPromptsTogether(InferenceEngine engine, string family)
    {
        string folder = Path.Combine(root.FullName, family);
        using (var model = Models.DecoderFamiliesTests.CreateFamily(family, seed: 3, vocabulary: Config.VocabSize)) ModelFolder.Save(model, folder);
        var requests = Enumerable.Range(0, 6).Select(i => Request(null, promptSeed: i, maxTokens: 8) with { BaseModel = family, BaseFolder = folder }).ToList();
        return (requests, await Task.WhenAll(requests.Select(r => RunAsync(engine, r))));
    }

    /// <summary>
    /// Rope types that read the sequence's length (Phi-3's LongRoPE over an original context of 4, SmolLM3's dynamic NTK past
    /// 4 positions) with prompts of 3 to 7 tokens, so a padded prefill holds rows on both sides: each row gets what it gets
    /// alone, which is greedy decoding over the model's own cache (the prompt rotated at its length, each new token at its
    /// position + 1), not the uncached forward, which rotates every position at the final length.
    /// </summary>
    [Theory]
    [InlineData("phi3")]
    [InlineData("smollm3")]
    public async Task LengthDependentRopeGivesEachRowWhatItGetsAlone(string family)
    {
        using var engine = new InferenceEngine(new InferenceOptions { MaxBatch = 4 });
        var (requests, together) = await SixPromptsTogether(engine, family);
        for (int i = 0; i < requests.Count; i++)
        {
            Assert.Equal((await RunAsync(engine, requests[i])).Text, together[i].Text);
            Assert.Equal(Text(CachedReference(requests[i])), together[i].Text);
        }
        Assert.Contains(requests, r => Text(Reference(r)) != Text(CachedReference(r)));   // the length-dependent rotation shows
    }

    /// <summary>Greedy decoding one request alone over the model's KvCache: the prompt in one call, then a token per call.</summary>
    static List<int> CachedReference(GenerationRequest request)
    {
        using var scope = NewDisposeScope();
        using var model = ModelFolder.Load(request.BaseFolder);
        using var _ = no_grad();
        using var cache = new KvCache(((CausalLanguageModel)model).NumLayers);
        var produced = new List<int>();
        var input = tensor(request.Prompt.Select(i => (long)i).ToArray(), [1, request.Prompt.Count]);
        for (int i = 0; i < request.Options.MaxTokens; i++)
        {
            int next = (int)((CausalLanguageModel)model).Forward(input, cache)[0, -1].argmax().item<long>();
            if (next == ByteTokenizer.End) break;
            produced.Add(next);
            input = tensor(new long[] { next }, [1, 1]);
        }
        return produced;
    }

    [Fact]
    public async Task SeededSamplingIsIndependentOfBatchmates()
    {
        using var engine = new InferenceEngine();
        var request = Request(1, promptSeed: 3, maxTokens: 10, temperature: 1.0, seed: 77);
        var alone = await RunAsync(engine, request);
        var crowd = Enumerable.Range(0, 6).Select(i => RunAsync(engine, Request(i % 4, promptSeed: 10 + i, temperature: 1.0))).ToList();
        var again = await RunAsync(engine, request);
        await Task.WhenAll(crowd);
        Assert.Equal(alone.Text, again.Text);
    }

    /// <summary>A model whose config lists several end ids (as Llama 3 Instruct's does) stops at any of them.</summary>
    [Fact]
    public async Task GenerationStopsAtAnyOfTheEndIds()
    {
        string folder = Path.Combine(root.FullName, "two-ends");
        using (var scope = NewDisposeScope())
        using (var model = Create(config: Config with { EosTokenIds = [ByteTokenizer.End, 0] }))
        {
            using (no_grad()) model.model.norm.weight.zero_();   // every logit 0: greedy decoding picks token 0, the second end id
            ModelFolder.Save(model, folder);
        }
        using var engine = new InferenceEngine();
        var request = Request(null, 2, maxTokens: 8) with { BaseModel = "two-ends", BaseFolder = folder };
        var (text, finish) = await RunAsync(engine, request);
        Assert.Equal(("", "stop"), (text, finish));
    }

    [Fact]
    public async Task AFullQueueIsRefusedAtOnce()
    {
        using var engine = new InferenceEngine(new InferenceOptions { MaxBatch = 1, MaxQueued = 1 });
        var first = (await engine.StartAsync(Request(null, 0, maxTokens: 60))).GetAsyncEnumerator();
        Assert.True(await first.MoveNextAsync());                                     // running: it holds the only batch place
        var second = await engine.StartAsync(Request(null, 1, maxTokens: 5));        // waits: the one queue place
        await Assert.ThrowsAsync<EngineBusyException>(() => engine.StartAsync(Request(null, 5)));
        while (await first.MoveNextAsync()) { }
        await foreach (var _ in second) { }
        await RunAsync(engine, Request(null, 6));   // room again once they finished
    }

    [Fact]
    public async Task TheAdapterCacheKeepsToItsBudgetAndReloadsWhatItDropped()
    {
        long oneAdapter;
        using (var probe = new InferenceEngine())
        {
            await RunAsync(probe, Request(0, 1, maxTokens: 1));
            oneAdapter = probe.Adapters.Bytes;
        }
        using var engine = new InferenceEngine(new InferenceOptions { AdapterCacheBytes = oneAdapter * 2 });
        var first = await RunAsync(engine, Request(0, 1));
        for (int i = 1; i < 4; i++) await RunAsync(engine, Request(i, 1));
        Assert.True(engine.Adapters.Bytes <= oneAdapter * 2, $"{engine.Adapters.Bytes} bytes cached, budget {oneAdapter * 2}");
        long misses = engine.Adapters.Misses;
        Assert.Equal(first.Text, (await RunAsync(engine, Request(0, 1))).Text);   // dropped, then reloaded transparently
        Assert.Equal(misses + 1, engine.Adapters.Misses);
        long hits = engine.Adapters.Hits;
        await RunAsync(engine, Request(0, 2));
        Assert.Equal(hits + 1, engine.Adapters.Hits);
    }

    [Fact]
    public async Task ARequestThatFailsNeitherLeaksItsQueuePlaceNorHurtsItsBatchmates()
    {
        using var engine = new InferenceEngine(new InferenceOptions { MaxQueued = 2 });
        var missingBase = Request(null, 1) with { BaseModel = "missing", BaseFolder = Path.Combine(root.FullName, "missing") };
        for (int i = 0; i < 3; i++)   // more failures than queue places: each must give its place back
            await Assert.ThrowsAnyAsync<Exception>(() => RunAsync(engine, missingBase));

        var alone = await RunAsync(engine, Request(0, 2, maxTokens: 20));
        var running = RunAsync(engine, Request(0, 2, maxTokens: 20));
        var badToken = Request(1, 3) with { Prompt = [1, 2, 99999] };
        await Assert.ThrowsAsync<ArgumentException>(() => RunAsync(engine, badToken));
        var tiny = await RunAsync(engine, Request(2, 4, temperature: 1e-300, seed: 1));   // float64 softmax: finite, greedy-like
        Assert.Equal((await RunAsync(engine, Request(2, 4))).Text, tiny.Text);
        Assert.Equal(alone.Text, (await running).Text);
    }

    /// <summary>Logprobs are the model's own: each token's and the top alternatives' equal the uncached forward's log-softmax (adapter attached).</summary>
    [Fact]
    public async Task LogprobsEqualTheUncachedForwardsLogSoftmax()
    {
        using var engine = new InferenceEngine();
        var request = Request(5, promptSeed: 4, maxTokens: 6);   // Lily: per-sequence router state
        request = request with { Options = request.Options with { Logprobs = 3 } };
        var chunks = await ChunksAsync(engine, request);
        var got = chunks.SelectMany(c => c.Logprobs ?? []).ToList();
        var expected = new List<double[]>();
        var tokens = Reference(request, expected);
        Assert.Equal(tokens, got.Select(t => t.Token));
        Assert.Equal(Text(tokens), string.Concat(chunks.Select(c => c.Text)));
        for (int i = 0; i < got.Count; i++)
        {
            Assert.Equal(expected[i][got[i].Token], got[i].Logprob, 1e-4);
            var best = expected[i].Select((v, t) => (v, t)).OrderByDescending(p => p.v).Take(3).ToList();
            Assert.Equal(best.Select(p => p.t), got[i].Top.Select(t => t.Token));
            for (int k = 0; k < 3; k++) Assert.Equal(best[k].v, got[i].Top[k].Logprob, 1e-4);
            Assert.Equal([(byte)got[i].Token], got[i].Bytes);   // the byte tokenizer's own byte
        }
    }

    /// <summary>n greedy choices of a prompt prefilled once are each what the uncached model says (keys, values and Lily's router state copied).</summary>
    [Fact]
    public async Task GreedyChoicesEachMatchTheUncachedModel()
    {
        using var engine = new InferenceEngine(new InferenceOptions { MaxBatch = 5 });
        foreach (int adapter in new[] { 5, 0 })
        {
            var request = Request(adapter, promptSeed: 6, maxTokens: 8);
            var chunks = await ChunksAsync(engine, request with { Options = request.Options with { N = 3 } });
            var expected = Text(Reference(request));
            Assert.Equal([expected, expected, expected], ChoiceTexts(chunks, 3));
            Assert.Equal(3, chunks.Count(c => c.FinishReason is not null));
        }
    }

    [Fact]
    public async Task SeededChoicesDifferFromEachOtherAndAreReproducible()
    {
        using var engine = new InferenceEngine(new InferenceOptions { MaxBatch = 6 });
        var request = Request(1, promptSeed: 3, maxTokens: 10, temperature: 1.0, seed: 77);
        var many = request with { Options = request.Options with { N = 4 } };
        var first = ChoiceTexts(await ChunksAsync(engine, many), 4);
        var crowd = Enumerable.Range(0, 3).Select(i => RunAsync(engine, Request(i, promptSeed: 10 + i, temperature: 1.0))).ToList();
        var again = ChoiceTexts(await ChunksAsync(engine, many), 4);
        await Task.WhenAll(crowd);
        Assert.Equal(first, again);
        Assert.Equal(4, first.Distinct().Count());
        Assert.Equal((await RunAsync(engine, request)).Text, first[0]);   // choice 0 is the seed's own stream
    }

    /// <summary>Presence and frequency penalties and logit bias change greedy decoding exactly as OpenAI's formula on the uncached model's logits says.</summary>
    [Fact]
    public async Task PenaltiesAndBiasFollowOpenAisFormula()
    {
        using var engine = new InferenceEngine();
        var request = Request(2, promptSeed: 1, maxTokens: 16);
        var plain = Reference(request);
        var penalised = request with { Options = request.Options with { FrequencyPenalty = 1.5, PresencePenalty = 0.7, LogitBias = new Dictionary<int, double> { [plain[0]] = -100, [(int)'q'] = 3.5 } } };
        var expected = Reference(penalised);
        Assert.NotEqual(plain, expected);
        Assert.Equal(Text(expected), (await RunAsync(engine, penalised)).Text);
        var forced = request with { Options = request.Options with { LogitBias = new Dictionary<int, double> { [(int)'x'] = 100 } } };
        Assert.Equal(new string('x', 16), (await RunAsync(engine, forced)).Text);
    }

    /// <summary>The constraint hook: a mask that allows only digits yields only digits, and sees every sampled token.</summary>
    [Fact]
    public async Task AConstraintMasksEveryStepAndSeesEachToken()
    {
        using var engine = new InferenceEngine();
        var seen = new List<int>();
        var request = Request(0, promptSeed: 2, maxTokens: 9, temperature: 1.0, seed: 5) with { Constraint = () => new DigitsOnly(seen) };
        var (text, finish) = await RunAsync(engine, request);
        Assert.Equal(("length", 9), (finish, text.Length));
        Assert.All(text, c => Assert.InRange(c, '0', '9'));
        Assert.Equal(text, string.Concat(seen.Select(t => (char)t)));
    }

    sealed class DigitsOnly(List<int> seen) : ILogitsConstraint
    {
        public void Mask(Tensor logits)
        {
            var allowed = zeros(logits.shape[0], ScalarType.Bool);
            allowed.narrow(0, '0', 10).fill_(true);
            logits.masked_fill_(allowed.logical_not(), double.NegativeInfinity);
        }

        public void Advance(int token) => seen.Add(token);
    }
}
