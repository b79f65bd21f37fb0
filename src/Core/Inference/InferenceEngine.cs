using System.Runtime.CompilerServices;
using System.Threading.Channels;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Telemetry;
using AdapterService.Core.Text;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// Continuous batching over one copy of each base model. One dedicated thread owns the models (TorchSharp dispose
/// scopes are per thread): between token steps it admits waiting requests (prefilled together, padded), then runs one decode
/// step for every running sequence of a base model in a single forward pass, each row with its own adapter of any
/// method (LoRA and DoRA gathered per row, others applied to their rows, <see cref="RowAdapter"/>) or none, over a preallocated <see cref="SlotKvCache"/>. Finished rows leave
/// at the same token boundary. Adapter weights come from an <see cref="AdapterCache"/> loaded off this thread.
/// </summary>
public sealed partial class InferenceEngine : IDisposable
{
    static readonly ByteTokenizer ByteTokens = new();
    /// <summary>New requests (their first <see cref="Sequence"/>) and <see cref="RetireBase"/> messages, for the inference thread.</summary>
    readonly Channel<object> incoming = Channel.CreateUnbounded<object>(new UnboundedChannelOptions { SingleReader = true });

    /// <summary>A base model was deleted: its batch finishes its rows, takes no new ones and is freed when idle.</summary>
    sealed record RetireBase(string BaseModel);
    readonly Dictionary<string, Batch> batches = [];
    int retired;
    readonly InferenceOptions options;
    readonly Thread thread;
    volatile bool stopping;

    public AdapterCache Adapters { get; }
    /// <summary>Cached prompt prefixes (null when <see cref="InferenceOptions.PrefixCacheBytes"/> is 0).</summary>
    public PrefixCache? Prefixes { get; }
    /// <summary>Prompt tokens whose keys and values came from the prefix cache.</summary>
    public long CachedPromptTokens => Interlocked.Read(ref cachedPromptTokens);
    long cachedPromptTokens;
    /// <summary>The content key of each adapter name served (so deleting the name frees its cached prefixes).</summary>
    readonly System.Collections.Concurrent.ConcurrentDictionary<string, string> adapterContent = new();
    public long GeneratedTokens => Interlocked.Read(ref generatedTokens);
    /// <summary>Requests accepted but not yet in a running batch.</summary>
    public int Queued => Admission.Queued;
    /// <summary>Every decision about letting work in: the queue limit, starts (n's rows, prefill slots, the policy's hook), the prefill budget.</summary>
    public Admission Admission { get; }
    /// <summary>Sequences in the running batches.</summary>
    public int Running => Volatile.Read(ref running);
    long generatedTokens;
    int running;
    /// <summary>Requests preempted (their rows given to another project's request; resumed later where they were).</summary>
    public long Preemptions => Interlocked.Read(ref preemptions);
    long preemptions, starts;
    /// <summary>Prefill forward passes run (each carries one chunk of up to a step's budget per prompt in it).</summary>
    public long PrefillForwards => Interlocked.Read(ref prefillForwards);
    long prefillForwards;

    /// <summary>The precision it loads base models in (<c>Models:Precision</c>, the one training uses).</summary>
    public BasePrecision Precision { get; }

    /// <param name="options">Batching and cache settings.</param>
    /// <param name="precision">The precision of the bases it serves; float32 when none is given.</param>
    /// <param name="policy">The admission policy's hook (per-project shares, rollouts and eval runs), or none.</param>
    public InferenceEngine(InferenceOptions? options = null, BasePrecision? precision = null, IAdmissionPolicy? policy = null)
    {
        this.options = options ?? new InferenceOptions();
        Admission = new Admission(this.options, policy);
        Precision = precision ?? BasePrecision.Float32;
        Adapters = new AdapterCache(this.options.AdapterCacheBytes);
        if (this.options.PrefixCacheBytes > 0) Prefixes = new PrefixCache(this.options.PrefixCacheBytes, Math.Max(1, this.options.PrefixBlockTokens));
        thread = new Thread(Loop) { IsBackground = true, Name = "inference" };
        thread.Start();
        EngineTelemetry.Track(this);
    }

    /// <summary>
    /// Queues a request (loading its adapter first, off the inference thread) and returns its chunks as they are made.
    /// Throws <see cref="EngineBusyException"/> at once when too many requests are waiting.
    /// </summary>
    public async Task<IAsyncEnumerable<GenerationChunk>> StartAsync(GenerationRequest request, CancellationToken cancel = default)
    {
        int n = Math.Max(1, request.Options.N);
        var admitted = new AdmissionRequest(request.Project, request.Source, request.Prompt.Count, 0, request.Options.MaxTokens, n);
        Admission.Enter(admitted);
        var output = Channel.CreateUnbounded<GenerationChunk>(new UnboundedChannelOptions { SingleWriter = true, SingleReader = true });
        Choices? made = null;
        var (span, start) = EngineTelemetry.Begin(request);
        try
        {
            // Each choice's own constraint, made before the adapter lease is taken (a constraint that fails to build leaks nothing).
            var constraints = Enumerable.Range(0, n).Select(_ => request.Constraint?.Invoke()).ToList();
            var adapter = request.Adapter is null ? null : await Adapters.AcquireAsync(request.Adapter,
                () => ServedAdapter.Load(request.AdapterFolder!, ModelConfig.Load(Path.Combine(request.BaseFolder, ModelFolder.ConfigFile))));
            if (adapter is not null) adapterContent[request.Adapter!] = adapter.Entry.Adapter.ContentKey;
            // n choices, each with its own sampler state; a seed gives choice i its own stream (choice 0 the seed's own).
            var choices = new Choices { Open = n, Joining = n, Admitted = admitted };
            choices.Ended = () => Admission.Ended(choices.Admitted, choices.Started);
            for (int i = 0; i < n; i++)
                choices.All.Add(new Sequence
                {
                    Request = request, Output = output.Writer, Cancel = cancel, Adapter = adapter, Stops = new StopSequences(request.Options.Stop),
                    Generator = request.Options.Seed is { } seed ? new Generator(unchecked((ulong)seed + (ulong)i * 0x9E3779B97F4A7C15UL)) : null,
                    Logits = new LogitsProcessor(request.Options, constraints[i]), Index = i, Siblings = choices,
                });
            made = choices;   // from here its end gives its queue place back
            if (!incoming.Writer.TryWrite(choices.All[0]))
            {
                FinishAll(choices.All[0], new ObjectDisposedException(nameof(InferenceEngine), "The inference engine is shutting down."));
                throw new ObjectDisposedException(nameof(InferenceEngine), "The inference engine is shutting down.");
            }
        }
        catch
        {
            if (made is null) Admission.Ended(admitted, started: false);
            span?.Dispose();
            throw;
        }
        return EngineTelemetry.Observe(output.Reader.ReadAllAsync(cancel), span, start);
    }

    /// <summary><see cref="StartAsync"/> and its chunks in one enumeration.</summary>
    public async IAsyncEnumerable<GenerationChunk> Generate(GenerationRequest request, [EnumeratorCancellation] CancellationToken cancel = default)
    {
        await foreach (var chunk in (await StartAsync(request, cancel)).WithCancellation(cancel))
            yield return chunk;
    }

    /// <summary>
    /// Forgets a deleted base model: its batch finishes the rows it has, then its weights, cache and cached prefixes are
    /// freed (a base imported again under the id is loaded afresh either way, by <see cref="ModelFolder.Version"/>).
    /// </summary>
    public void EvictBase(string baseModel) => incoming.Writer.TryWrite(new RetireBase(baseModel));

    /// <summary>Moves a batch out of its base's key: it finishes its rows, takes no new ones, and is freed when idle.</summary>
    void Retire(Batch batch, string baseModel)
    {
        batch.Retired = true;
        batches[$"{baseModel}\0retired {++retired}"] = batch;
    }

    /// <summary>Forgets a deleted adapter's weights (freed once no running request uses them) and its cached prefixes.</summary>
    public void Evict(string adapter)
    {
        Adapters.Evict(adapter);
        if (adapterContent.TryRemove(adapter, out var content)) Prefixes?.Forget(adapterKey: content);
    }

    void Loop()
    {
        using var noGrad = no_grad();
        while (!stopping)
        {
            bool idle = batches.Values.All(b => b.Idle);
            if (idle && !incoming.Reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult()) break;
            while (incoming.Reader.TryRead(out var message))
                if (message is Sequence sequence) Enqueue(sequence);
                else if (message is RetireBase retire && batches.Remove(retire.BaseModel, out var old)) Retire(old, retire.BaseModel);
            foreach (var batch in batches.Values) RunStep(batch);
            foreach (var key in batches.Where(b => b.Value.Retired && b.Value.Idle).Select(b => b.Key).ToList())
            {
                Prefixes?.Forget(baseKey: batches[key].BaseKey);
                batches[key].Dispose();
                batches.Remove(key);
            }
        }
    }

    void Enqueue(Sequence sequence)
    {
        try
        {
            var request = sequence.Request;
            string version = ModelFolder.Version(request.BaseFolder);
            if (batches.TryGetValue(request.BaseModel, out var batch) && batch.Version != version)
            {
                // The base was deleted and imported again under its id: the old weights finish their rows under another key.
                batches.Remove(request.BaseModel);
                Retire(batch, request.BaseModel);
                batch = null;
            }
            if (batch is null)
            {
                var model = ModelFolder.Load<CausalLanguageModel>(request.BaseFolder, Precision);
                // Running rows take slots [0, MaxBatch); prompts prefilled over several steps take the PrefillSlots after them.
                int staging = options.ChunkedPrefill ? Math.Max(1, options.PrefillSlots) : 0;
                batches[request.BaseModel] = batch = new Batch(model, new SlotKvCache(model, options.MaxBatch + staging, model.ContextLength), version, options.MaxBatch)
                    { BaseKey = $"{request.BaseFolder}\0{version}" };
            }
            if (request.Prompt.Count == 0) throw new ArgumentException("the prompt is empty");
            if (request.Prompt.Count >= batch.Model.ContextLength)
                throw new ArgumentException($"the prompt has {request.Prompt.Count} tokens; this model's context is {batch.Model.ContextLength}");
            if (request.Prompt.Any(t => (uint)t >= (uint)batch.Model.VocabSize))
                throw new ArgumentException($"the prompt holds token ids outside this model's vocabulary of {batch.Model.VocabSize}");
            if (request.Options.LogitBias?.Keys.Where(t => (uint)t >= (uint)batch.Model.VocabSize).Select(t => (int?)t).FirstOrDefault() is { } outside)
                throw new ArgumentException($"logit_bias names token {outside}, outside this model's vocabulary of {batch.Model.VocabSize}", "logit_bias");
            if (sequence.Siblings.All.Count > batch.MaxRows)
                throw new ArgumentException($"n={sequence.Siblings.All.Count} is more than the {batch.MaxRows} sequences decoded together here", "n");
            batch.Waiting.Add(sequence);
        }
        catch (Exception e)
        {
            FinishAll(sequence, e);
        }
    }

    /// <summary>One token for every running row in one forward pass.</summary>
    void DecodeStep(Batch batch)
    {
        var rows = batch.Rows;
        ServiceTelemetry.BatchRows.Record(rows.Count);
        List<int> done = [];
        try
        {
            using var scope = NewDisposeScope();
            if (batch.Adapters is null)
            {
                var adapters = SetAdapters(batch, rows, Enumerable.Range(0, rows.Count).Select(i => (long)i).ToList());
                batch.Adapters = adapters;
                adapters.Keep();
            }
            else batch.Adapters.Reattach();   // a prompt chunk's forward had the model's slots
            var device = batch.Cache.Device;
            var lengths = tensor(rows.Select(r => r.Length).ToArray(), device: device);                  // [rows]
            batch.Cache.BeginDecode(lengths);
            var ids = tensor(rows.Select(r => (long)r.LastToken).ToArray(), [rows.Count, 1], device: device);   // [rows, 1]
            long visible = rows.Max(r => r.Length) + 1;
            var mask = arange(visible, ScalarType.Int64, device).unsqueeze(0).le(lengths.unsqueeze(1)).view(rows.Count, 1, 1, visible);
            var logits = batch.Model.Forward(ids, lengths.unsqueeze(1), mask, batch.Cache);               // [rows, 1, vocab]
            for (int i = 0; i < rows.Count; i++)
            {
                rows[i].Length++;
                try
                {
                    if (rows[i].Abandoned) Finish(rows[i], new OperationCanceledException(rows[i].Cancel));
                    else if (!Step(batch, rows[i], logits[i, 0])) continue;
                }
                catch (Exception e)
                {
                    Finish(rows[i], e);   // one row's failure (say, its sampling) is not its batchmates'
                }
                done.Add(i);
            }
        }
        catch (Exception e)
        {
            done = Enumerable.Range(0, rows.Count).ToList();   // a failed step fails the rows in it, not the engine
            foreach (var i in done) Finish(rows[i], e);
        }
        foreach (var i in done.OrderDescending()) Remove(batch, i);
    }

    /// <summary>Removes row <paramref name="index"/>, moving the last row into its slot so rows stay contiguous.</summary>
    void Remove(Batch batch, int index)
    {
        Interlocked.Decrement(ref running);
        var rows = batch.Rows;
        int last = rows.Count - 1;
        if (index != last)
        {
            batch.Cache.Move(last, index, rows[last].Length);
            foreach (var state in batch.States.Values) state[index].copy_(state[last]);
            rows[index] = rows[last];
        }
        rows.RemoveAt(last);
        batch.ClearAdapters();
    }

    /// <summary>Each row's own adapter (in cache slot <paramref name="slots"/>[i]) in every adapted layer, block and norm of the model.</summary>
    static RowAdapters SetAdapters(Batch batch, IReadOnlyList<Sequence> rows, IReadOnlyList<long> slots, Tensor? valid = null, StateMarks? marks = null) =>
        RowAdapters.Attach(batch.Model, rows.Select(r => r.Adapter?.Entry.Adapter).ToList(), slots, batch.State, valid, marks);

    /// <summary>Stops at the next token boundary, failing what is still running or waiting; then frees the models.</summary>
    public void Dispose()
    {
        EngineTelemetry.Untrack(this);
        stopping = true;
        incoming.Writer.TryComplete();
        thread.Join();
        var shutdown = new ObjectDisposedException(nameof(InferenceEngine), "The inference engine shut down.");
        while (incoming.Reader.TryRead(out var left))
            if (left is Sequence sequence) FinishAll(sequence, shutdown);
        foreach (var b in batches.Values)
        {
            foreach (var s in b.Rows.Concat(b.Prefilling).Concat(b.Waiting)) FinishAll(s, shutdown);
            b.Dispose();
        }
        Prefixes?.Dispose();
    }
}
