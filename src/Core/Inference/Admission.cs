namespace AdapterService.Core.Inference;

/// <summary>What admission knows of a request: whose it is, what sent it, and its token counts.</summary>
/// <param name="Project">The request's project (null: none).</param>
/// <param name="Source">What sent it (people's requests, rollouts, eval runs).</param>
/// <param name="PromptTokens">Its prompt's length.</param>
/// <param name="CachedTokens">Prompt tokens the prefix cache holds (known when it could start; 0 when queued).</param>
/// <param name="MaxTokens">The most tokens each choice may generate.</param>
/// <param name="Choices">n: the rows it takes.</param>
public sealed record AdmissionRequest(string? Project, RequestSource Source, int PromptTokens, int CachedTokens, int MaxTokens, int Choices)
{
    /// <summary>Prompt tokens its prefill computes.</summary>
    public int PrefillTokens => PromptTokens - CachedTokens;
}

/// <summary>A base model's batch when a waiting request could start.</summary>
/// <param name="RunningRows">Rows decoding now.</param>
/// <param name="ReservedRows">Rows running or held for prompts being prefilled.</param>
/// <param name="MaxRows">Rows decoded together at most (<see cref="InferenceOptions.MaxBatch"/>).</param>
/// <param name="Prefilling">Prompts being prefilled.</param>
/// <param name="Waiting">Requests waiting to start, this one among them.</param>
public sealed record AdmissionLoad(int RunningRows, int ReservedRows, int MaxRows, int Prefilling, int Waiting);

/// <summary>A running request the engine could preempt, and the rows it holds now (its unfinished choices).</summary>
public readonly record struct RunningRequest(AdmissionRequest Request, int Rows);

/// <summary>
/// The hook a policy plugs into admission: per-project shares, rollouts and eval runs after people's requests. The
/// queueing call runs on the caller's thread, the others on the inference thread (fast, never blocking); each has a
/// default that changes nothing, so a policy implements only what it decides.
/// </summary>
public interface IAdmissionPolicy
{
    /// <summary>Null to queue a new request, or why it is refused (the caller's 429 says it).</summary>
    string? RefuseQueueing(AdmissionRequest request, int queued) => null;

    /// <summary>Whether a waiting request that fits may start now; false keeps it waiting and lets later requests go first.</summary>
    bool MayStart(AdmissionRequest request, AdmissionLoad load) => true;

    /// <summary>The request started (its prompt is being prefilled; its rows are held).</summary>
    void Started(AdmissionRequest request) { }

    /// <summary>The request ended (every choice finished, failed or was cancelled), started or not.</summary>
    void Ended(AdmissionRequest request) { }

    /// <summary>
    /// Running requests to preempt so that <paramref name="request"/>, which may start but finds no row places, can
    /// (empty: it waits). <paramref name="running"/>: the batch's requests that can be preempted, oldest first. The
    /// engine frees their rows and puts them back at the front of the queue with their tokens kept (recompute-style,
    /// as vLLM: prompt and generated tokens prefilled again when they resume), then calls <see cref="Preempted"/> for
    /// each; when one starts again, <see cref="Started"/> follows as for a new request.
    /// </summary>
    IReadOnlyList<AdmissionRequest> Preempt(AdmissionRequest request, AdmissionLoad load, IReadOnlyList<RunningRequest> running) => [];

    /// <summary>The request's rows were taken back: it waits again.</summary>
    void Preempted(AdmissionRequest request) { }
}

/// <summary>
/// Admission, one component for every decision about letting work in: whether a request may queue (the queue limit,
/// then the policy), which waiting requests start in an engine step (row places for their n choices, a prefill slot,
/// the policy), which running requests give their rows back to a waiting one (the policy; the engine preempts them), and how many prompt tokens a step's prefill carries (the chunk budget; a prefix hit lowers what a prompt
/// costs). Thread-safe counters; the start decisions are the inference thread's.
/// </summary>
public sealed class Admission(InferenceOptions options, IAdmissionPolicy? policy = null)
{
    int queued;

    /// <summary>Requests accepted but not yet started.</summary>
    public int Queued => Volatile.Read(ref queued);

    /// <summary>Takes a queue place for a new request, or throws <see cref="EngineBusyException"/> (the queue is full, or the policy refuses).</summary>
    public void Enter(AdmissionRequest request)
    {
        int now = Interlocked.Increment(ref queued);
        string? refused = now > options.MaxQueued ? $"The server is busy: {options.MaxQueued} requests are already waiting. Retry shortly."
            : policy?.RefuseQueueing(request, now - 1);
        if (refused is null) return;
        Interlocked.Decrement(ref queued);
        throw new EngineBusyException(refused);
    }

    /// <summary>Gives a queue place back (the request started, or failed or was cancelled while waiting).</summary>
    public void Leave() => Interlocked.Decrement(ref queued);

    /// <summary>
    /// Prompt tokens (padding included) one prefill forward may carry: chunked, the step's budget less its decode rows,
    /// but never under a quarter of it (so prompts are not starved by a full batch); unchunked, <see cref="InferenceOptions.PrefillTokens"/>.
    /// </summary>
    public long PrefillBudget(int runningRows) => options.ChunkedPrefill
        ? Math.Max(options.StepTokens - runningRows, Math.Max(1, options.StepTokens / 4))
        : options.PrefillTokens;

    /// <summary>The most tokens one more row of a prefill forward may have, <paramref name="rows"/> rows padded to <paramref name="longest"/> being in it (0: none).</summary>
    public static long Room(long budget, int rows, long longest) =>
        rows == 0 ? budget : longest * (rows + 1) <= budget ? budget / (rows + 1) : 0;

    /// <summary>Whether a waiting request fits now: row places for its n choices, and a prefill slot when chunked.</summary>
    public bool Fits(AdmissionRequest request, AdmissionLoad load, bool prefillSlotFree) =>
        load.ReservedRows + request.Choices <= load.MaxRows && (prefillSlotFree || !options.ChunkedPrefill);

    /// <summary>Whether the policy lets a request that fits start now.</summary>
    public bool MayStart(AdmissionRequest request, AdmissionLoad load) => policy?.MayStart(request, load) ?? true;

    /// <summary>Row places a waiting request lacks now (0 or less: it has them).</summary>
    public static int RowsShort(AdmissionRequest request, AdmissionLoad load) => load.ReservedRows + request.Choices - load.MaxRows;

    /// <summary>The running requests the policy preempts for a waiting one (none without a policy).</summary>
    public IReadOnlyList<AdmissionRequest> Preempt(AdmissionRequest request, AdmissionLoad load, IReadOnlyList<RunningRequest> running) =>
        policy is null || running.Count == 0 ? [] : policy.Preempt(request, load, running);

    /// <summary>A preempted request goes back into the queue (its place counted again, beyond the limit if need be: it was admitted).</summary>
    public void Preempted(AdmissionRequest request)
    {
        Interlocked.Increment(ref queued);
        policy?.Preempted(request);
    }

    /// <summary>The request leaves the queue and starts.</summary>
    public void Started(AdmissionRequest request)
    {
        Leave();
        policy?.Started(request);
    }

    /// <summary>The request ended (<paramref name="started"/>: after <see cref="Started"/>; otherwise it gives its queue place back).</summary>
    public void Ended(AdmissionRequest request, bool started)
    {
        if (!started) Leave();
        policy?.Ended(request);
    }
}
