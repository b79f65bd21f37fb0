using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using static AdapterService.Core.Tests.TinyLlama;

namespace AdapterService.Core.Tests.Inference;

/// <summary>The prefix cache: keyed by project, base version and adapter content; hits equal misses; LRU within its budget.</summary>
public sealed partial class InferenceEngineTests
{
    /// <summary>A prompt of a shared 40-token prefix (seed 70) and a suffix of its own.</summary>
    GenerationRequest Shared(int? adapter, int suffixSeed, int suffix = 7, string? project = null) =>
        LongRequest(adapter, 40, 70) with
        {
            Prompt = [.. Ids(1, 40, 70).data<long>().Select(i => (int)i), .. Ids(1, suffix, suffixSeed).data<long>().Select(i => (int)i)],
            Project = project,
        };

    static int Cached(List<GenerationChunk> chunks) => chunks[^1].CachedTokens;

    /// <summary>
    /// Requests sharing a 40-token prefix (five blocks of 8) after the first: chunked or not, with LoRA, Lily (its router
    /// sums restored from the block end) and no adapter, each hit reuses the 40 tokens and says what the uncached model says.
    /// </summary>
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public async Task PrefixHitsGiveWhatMissesGive(bool chunked)
    {
        using var engine = new InferenceEngine(new InferenceOptions { MaxBatch = 4, PrefillSlots = 2, StepTokens = 12, ChunkedPrefill = chunked, PrefixBlockTokens = 8 });
        foreach (int? adapter in new int?[] { 0, 5, null })
        {
            var first = await ChunksAsync(engine, Shared(adapter, 71));
            Assert.Equal(0, Cached(first));
            Assert.Equal(Text(Reference(Shared(adapter, 71))), ChoiceTexts(first, 1)[0]);
            var seconds = await Task.WhenAll(new[] { 72, 73 }.Select(seed => ChunksAsync(engine, Shared(adapter, seed))));
            for (int i = 0; i < 2; i++)
            {
                Assert.Equal(40, Cached(seconds[i]));
                Assert.Equal(Text(Reference(Shared(adapter, 72 + i))), ChoiceTexts(seconds[i], 1)[0]);
            }
            var n = Shared(adapter, 74);
            var choices = await ChunksAsync(engine, n with { Options = n.Options with { N = 2 } });   // n choices copy the restored state
            Assert.Equal(40, Cached(choices));
            Assert.Equal(Enumerable.Repeat(Text(Reference(n)), 2), ChoiceTexts(choices, 2));
        }
        Assert.Equal(3 * 3 * 40, engine.CachedPromptTokens);
    }

    /// <summary>
    /// A hit needs the same adapter content, never just a name: another adapter misses; a copy of the same files under
    /// another name hits; a name deleted and reused for other weights misses and is served with its new weights (and the
    /// deletion freed the old content's blocks).
    /// </summary>
    [Fact]
    public async Task PrefixesNeverCrossAdaptersOfDifferentContent()
    {
        using var engine = new InferenceEngine(new InferenceOptions { PrefixBlockTokens = 8 });
        string copy = Path.Combine(root.FullName, "copy-of-1"), reused = Path.Combine(root.FullName, "reused");
        CopyFolder(adapterFolders[1], copy);
        CopyFolder(adapterFolders[1], reused);
        var one = Shared(1, 71);
        Assert.Equal(0, Cached(await ChunksAsync(engine, one)));
        Assert.Equal(0, Cached(await ChunksAsync(engine, Shared(2, 71))));                                       // other weights
        Assert.Equal(40, Cached(await ChunksAsync(engine, one with { Adapter = "copy", AdapterFolder = copy })));   // the same files
        Assert.Equal(40, Cached(await ChunksAsync(engine, one with { Adapter = "reused", AdapterFolder = reused })));

        long before = engine.Prefixes!.Bytes;
        engine.Evict("reused");   // deleted: its content's blocks go (the copy's too: the same content)
        Assert.True(engine.Prefixes.Bytes < before);
        Directory.Delete(reused, recursive: true);
        CopyFolder(adapterFolders[3], reused);   // the name imported again with other weights
        var again = one with { Adapter = "reused", AdapterFolder = reused };
        var chunks = await ChunksAsync(engine, again);
        Assert.Equal(0, Cached(chunks));
        Assert.Equal(Text(Reference(again)), ChoiceTexts(chunks, 1)[0]);
        Assert.NotEqual(Text(Reference(one)), ChoiceTexts(chunks, 1)[0]);
    }

    static void CopyFolder(string from, string to)
    {
        Directory.CreateDirectory(to);
        foreach (string file in Directory.GetFiles(from)) File.Copy(file, Path.Combine(to, Path.GetFileName(file)));
    }

    /// <summary>Projects do not share prefixes unless the setting allows it (for the same base and adapter content still).</summary>
    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task ProjectsShareNoPrefixesUnlessAllowed(bool across)
    {
        using var engine = new InferenceEngine(new InferenceOptions { PrefixBlockTokens = 8, PrefixCacheAcrossProjects = across });
        Assert.Equal(0, Cached(await ChunksAsync(engine, Shared(0, 71, project: "proj-a"))));
        Assert.Equal(40, Cached(await ChunksAsync(engine, Shared(0, 72, project: "proj-a"))));
        Assert.Equal(across ? 40 : 0, Cached(await ChunksAsync(engine, Shared(0, 73, project: "proj-b"))));
    }

    /// <summary>
    /// Within a budget of 12 blocks, prompts of 6 full blocks each: the least recently used prompt's blocks go first, the
    /// cache never holds more than its budget, and a prompt used in between keeps its blocks.
    /// </summary>
    [Fact]
    public async Task PrefixBlocksAreEvictedLeastRecentlyUsedFirstWithinTheBudget()
    {
        long block;
        using (var probe = new InferenceEngine(new InferenceOptions { PrefixBlockTokens = 8 }))
        {
            await ChunksAsync(probe, LongRequest(null, 9, seed: 80, maxTokens: 1));
            block = probe.Prefixes!.Bytes;   // one full block of 8
        }
        using var engine = new InferenceEngine(new InferenceOptions { PrefixBlockTokens = 8, PrefixCacheBytes = 12 * block });
        GenerationRequest Prompt(int seed) => LongRequest(null, 49, seed, maxTokens: 1);   // 6 full blocks, 6 reusable
        await ChunksAsync(engine, Prompt(81));
        await ChunksAsync(engine, Prompt(82));
        Assert.Equal(48, Cached(await ChunksAsync(engine, Prompt(81))));   // 81 is now the more recent
        await ChunksAsync(engine, Prompt(83));                             // over budget: 82's blocks go
        Assert.True(engine.Prefixes!.Bytes <= 12 * block, $"{engine.Prefixes.Bytes} bytes cached, budget {12 * block}");
        Assert.Equal(48, Cached(await ChunksAsync(engine, Prompt(81))));
        Assert.Equal(48, Cached(await ChunksAsync(engine, Prompt(83))));
        Assert.Equal(0, Cached(await ChunksAsync(engine, Prompt(82))));
    }

    /// <summary>A deleted base's cached prefixes are freed with its batch; the same prompt then misses.</summary>
    [Fact]
    public async Task ADeletedBaseFreesItsCachedPrefixes()
    {
        using var engine = new InferenceEngine(new InferenceOptions { PrefixBlockTokens = 8 });
        await ChunksAsync(engine, Shared(0, 71));
        Assert.True(engine.Prefixes!.Bytes > 0);
        engine.EvictBase("tiny");
        for (int i = 0; i < 500 && engine.Prefixes.Bytes > 0; i++) await Task.Delay(10);   // the inference thread retires it
        Assert.Equal(0, engine.Prefixes.Bytes);
        Assert.Equal(0, Cached(await ChunksAsync(engine, Shared(0, 72))));
    }
}
