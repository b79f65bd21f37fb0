using AdapterService.Core.Adapters;
using AdapterService.Core.Inference;
using AdapterService.Core.Text;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

/// <summary>One sampled completion: its token ids (with the end id when the model ended it) and its text.</summary>
public sealed record Rollout(int[] Tokens, string Text);

/// <summary>Samples <c>n</c> completions of each prompt with the policy as it is now (the job's adapter at this step).</summary>
public interface IRolloutSampler
{
    IReadOnlyList<IReadOnlyList<Rollout>> Sample(IReadOnlyList<int[]> prompts, int n, double temperature, int maxTokens, long seed, CancellationToken cancel);
}

/// <summary>
/// Rollouts through the continuous-batching <see cref="InferenceEngine"/> the service answers requests with: each call
/// snapshots the trainable adapter (<see cref="ServedAdapter.Of"/>, a copy of the adapter's tensors only), puts it into
/// the engine's adapter cache under a key of its own for the call, queues every prompt's n choices at once (so they decode
/// in the engine's mixed batches, beside whatever else it serves), and drops the snapshot when all have finished.
/// </summary>
public sealed class EngineRollouts(InferenceEngine engine, string baseModel, string baseFolder, nn.Module model, TrainableAdapter adapter,
    ModelText text, string key) : IRolloutSampler
{
    int version;

    public IReadOnlyList<IReadOnlyList<Rollout>> Sample(IReadOnlyList<int[]> prompts, int n, double temperature, int maxTokens, long seed, CancellationToken cancel) =>
        SampleAsync(prompts, n, temperature, maxTokens, seed, cancel).GetAwaiter().GetResult();

    async Task<IReadOnlyList<IReadOnlyList<Rollout>>> SampleAsync(IReadOnlyList<int[]> prompts, int n, double temperature, int maxTokens, long seed, CancellationToken cancel)
    {
        string adapterKey = $"{key}\0rollout {++version}";
        var snapshot = ServedAdapter.Of(adapter, model);
        using var lease = await engine.Adapters.AcquireAsync(adapterKey, () => snapshot);
        try
        {
            var runs = prompts.Select((prompt, i) => Collect(new GenerationRequest(baseModel, baseFolder, adapterKey, null, prompt,
                new SamplingOptions(maxTokens, temperature, Seed: seed * 7919 + i, N: n, Logprobs: 0), text.Tokenizer, text.EosIds), n, cancel)).ToList();
            return await Task.WhenAll(runs);
        }
        finally
        {
            engine.Evict(adapterKey);   // freed once the lease (and every request's) is let go
        }
    }

    /// <summary>The n choices of one request, each as its tokens (taken from its logprobs) and text.</summary>
    async Task<IReadOnlyList<Rollout>> Collect(GenerationRequest request, int n, CancellationToken cancel)
    {
        var tokens = Enumerable.Range(0, n).Select(_ => new List<int>()).ToArray();
        var texts = Enumerable.Range(0, n).Select(_ => new System.Text.StringBuilder()).ToArray();
        await foreach (var chunk in engine.Generate(request, cancel))
        {
            texts[chunk.Index].Append(chunk.Text);
            if (chunk.Logprobs is { } logprobs) tokens[chunk.Index].AddRange(logprobs.Select(l => l.Token));
            // Ended by an end id (no stop strings are given): the end id is part of what was sampled, and trained on.
            if (chunk.FinishReason == "stop" && request.EosIds is [var end, ..]) tokens[chunk.Index].Add(end);
        }
        return [.. Enumerable.Range(0, n).Select(i => new Rollout([.. tokens[i]], texts[i].ToString()))];
    }
}
