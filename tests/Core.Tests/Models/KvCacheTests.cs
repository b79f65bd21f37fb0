using AdapterService.Core.Models;
using AdapterService.Core.Torch;
using static AdapterService.Core.Tests.TinyLlama;
using static TorchSharp.torch;

namespace AdapterService.Core.Tests.Models;

/// <summary>Decoding with a KV cache gives the logits of the full forward at every position.</summary>
public sealed class KvCacheTests
{
    const long Length = 12;

    public KvCacheTests() => TorchRuntime.EnsureReady();

    public static TheoryData<int[]> Chunkings => new()
    {
        Enumerable.Repeat(1, (int)Length).ToArray(),              // token by token
        new[] { 5, 1, 1, 1, 1, 1, 1, 1 },                         // prefill, then single tokens
        new[] { 4, 3, 1, 4 },                                     // several new tokens after cached ones (causal mask with an offset)
    };

    [Theory]
    [MemberData(nameof(Chunkings))]
    public void CachedDecodingMatchesFullForward(int[] chunks)
    {
        Assert.Equal(Length, chunks.Sum());
        using var scope = NewDisposeScope();
        using var model = Create();
        using var _ = no_grad();
        var ids = Ids(2, Length, seed: 11);
        var full = model.forward(ids);                            // [2, Length, vocab]

        using var cache = new KvCache(Config.NumHiddenLayers);
        long at = 0;
        foreach (int n in chunks)
        {
            var logits = model.Forward(ids.narrow(1, at, n), cache);
            AssertClose(full.narrow(1, at, n), logits, 1e-5);
            at += n;
            Assert.Equal(at, cache.Length);
        }
    }
}
