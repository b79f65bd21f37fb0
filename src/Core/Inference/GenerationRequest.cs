using AdapterService.Core.Text;

namespace AdapterService.Core.Inference;

/// <summary>
/// What to generate: the base model and (optionally) the adapter, each with the folder it is stored in; the tokenizer
/// turns generated tokens into text (the built-in byte tokenizer when null); the answer ends at one of
/// <paramref name="EosIds"/> (the model's text rules: config, generation_config and template end ids; the tokenizer's when null).
/// <paramref name="Constraint"/>, when given, makes each choice's own <see cref="ILogitsConstraint"/> (constrained decoding).
/// <paramref name="Project"/>: whose request it is (the prefix cache's partition and admission's shares; null: no project);
/// <paramref name="Source"/>: what sent it (admission may treat rollouts and eval runs apart from people's requests).
/// </summary>
public sealed record GenerationRequest(
    string BaseModel, string BaseFolder, string? Adapter, string? AdapterFolder, IReadOnlyList<int> Prompt, SamplingOptions Options,
    ITextTokenizer? Tokenizer = null, IReadOnlyList<int>? EosIds = null, Func<ILogitsConstraint>? Constraint = null,
    string? Project = null, RequestSource Source = RequestSource.Api);

/// <summary>What sent a request.</summary>
public enum RequestSource
{
    /// <summary>A client of the HTTP API.</summary>
    Api,
    /// <summary>Rollouts of a reinforcement fine-tuning job.</summary>
    Rollout,
    /// <summary>An evaluation run.</summary>
    Eval,
}

/// <summary>
/// A piece of the generated text of choice <paramref name="Index"/>; each choice's last one carries its finish reason ("stop"
/// or "length"). <paramref name="Logprobs"/> (when asked for): the tokens generated since the choice's previous chunk.
/// <paramref name="CachedTokens"/>: the prompt tokens whose keys and values came from the prefix cache.
/// </summary>
public sealed record GenerationChunk(string Text, int PromptTokens, int CompletionTokens, string? FinishReason, int Index = 0,
    IReadOnlyList<TokenLogprob>? Logprobs = null, int CachedTokens = 0);

/// <summary>The engine's queue is full; the caller should retry later (HTTP 429).</summary>
public sealed class EngineBusyException(string message) : Exception(message);

/// <summary><c>Inference:*</c> settings.</summary>
public sealed class InferenceOptions
{
    /// <summary>Sequences decoded together per base model.</summary>
    public int MaxBatch { get; set; } = 32;
    /// <summary>Requests waiting for a place in a batch before new ones are refused.</summary>
    public int MaxQueued { get; set; } = 256;
    /// <summary>Memory for adapter weights kept loaded (least recently used ones are dropped beyond it).</summary>
    public long AdapterCacheBytes { get; set; } = 1L << 30;
    /// <summary>
    /// Prompt tokens (padding included) prefilled together in one forward pass when <see cref="ChunkedPrefill"/> is off
    /// (whole prompts, before each decode step).
    /// </summary>
    public int PrefillTokens { get; set; } = 2048;
    /// <summary>
    /// Each engine step carries the running rows' decode tokens and up to <see cref="StepTokens"/> minus those of prompt
    /// chunks (Sarathi-Serve), so a long or burst prefill never stalls the running streams. Off: today's scheduler,
    /// whole prompts prefilled (up to <see cref="PrefillTokens"/> together) before each decode step.
    /// </summary>
    public bool ChunkedPrefill { get; set; } = true;
    /// <summary>Tokens per engine step under chunked prefill: decode rows plus prompt-chunk tokens (padding included).</summary>
    public int StepTokens { get; set; } = 512;
    /// <summary>Prompts being prefilled over several steps at once (each holds a cache slot beside the <see cref="MaxBatch"/> running ones).</summary>
    public int PrefillSlots { get; set; } = 8;
    /// <summary>Memory for cached prompt prefixes (keys, values and adapter state; least recently used blocks dropped beyond it); 0 turns the prefix cache off.</summary>
    public long PrefixCacheBytes { get; set; } = 256L << 20;
    /// <summary>Tokens per prefix-cache block: a hit reuses whole blocks.</summary>
    public int PrefixBlockTokens { get; set; } = 16;
    /// <summary>
    /// Let requests of different projects share cached prefixes (still only of identical base and adapter content). Off
    /// by default: a hit is faster, so a shared prefix tells one project what another sent.
    /// </summary>
    public bool PrefixCacheAcrossProjects { get; set; }
    /// <summary>
    /// The part of the engine's places (running rows plus waiting requests) one project may hold in flight
    /// (<see cref="ProjectShares"/>); 1 lets one project take them all.
    /// </summary>
    public double ProjectShare { get; set; } = 0.5;
    /// <summary>
    /// When a project's request finds the batch full while another project runs more than its fair part of the rows,
    /// <see cref="ProjectShares"/> has the engine preempt that project's newest requests (they resume later exactly where
    /// they were, their prompt and generated tokens prefilled again). Off: a waiting project waits for a row to end.
    /// </summary>
    public bool Preemption { get; set; } = true;
    /// <summary>
    /// While another project has requests in flight, a project running its fair part of the rows starts no more, even
    /// into rows left idle (so the batch, and with it every step's time, stays near what the others would see alone).
    /// Off: only while another project waits.
    /// </summary>
    public bool FairRows { get; set; } = true;
}
