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
    readonly Channel<Sequence> incoming = Channel.CreateUnbounded<Sequence>(new UnboundedChannelOptions { SingleReader = true });
    readonly Dictionary<string, Batch> batches = [];
    int retired;
    readonly InferenceOptions options;
    readonly Thread thread;
    int queued;
    volatile bool stopping;

    public AdapterCache Adapters { get; }
    public long GeneratedTokens => Interlocked.Read(ref generatedTokens);
    /// <summary>Requests accepted but not yet in a running batch.</summary>
    public int Queued => Volatile.Read(ref queued);
    /// <summary>Sequences in the running batches.</summary>
    public int Running => Volatile.Read(ref running);
    long generatedTokens;
    int running;

    /// <summary>The precision it loads base models in (<c>Models:Precision</c>, the one training uses).</summary>
    public BasePrecision Precision { get; }

    /// <param name="options">Batching and cache settings.</param>
    /// <param name="precision">The precision of the bases it serves; float32 when none is given.</param>
    public InferenceEngine(InferenceOptions? options = null, BasePrecision? precision = null)
    {
        this.options = options ?? new InferenceOptions();
        Precision = precision ?? BasePrecision.Float32;
        Adapters = new AdapterCache(this.options.AdapterCacheBytes);
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
        if (Interlocked.Increment(ref queued) > options.MaxQueued)
        {
            Interlocked.Decrement(ref queued);
            throw new EngineBusyException($"The server is busy: {options.MaxQueued} requests are already waiting. Retry shortly.");
        }
        var output = Channel.CreateUnbounded<GenerationChunk>(new UnboundedChannelOptions { SingleWriter = true, SingleReader = true });
        var (span, start) = EngineTelemetry.Begin(request);
        try
        {
            // Each choice's own constraint, made before the adapter lease is taken (a constraint that fails to build leaks nothing).
            int n = Math.Max(1, request.Options.N);
            var constraints = Enumerable.Range(0, n).Select(_ => request.Constraint?.Invoke()).ToList();
            var adapter = request.Adapter is null ? null : await Adapters.AcquireAsync(request.Adapter,
                () => ServedAdapter.Load(request.AdapterFolder!, ModelConfig.Load(Path.Combine(request.BaseFolder, ModelFolder.ConfigFile))));
            // n choices, each with its own sampler state; a seed gives choice i its own stream (choice 0 the seed's own).
            var choices = new Choices { Open = n };
            for (int i = 0; i < n; i++)
                choices.All.Add(new Sequence
                {
                    Request = request, Output = output.Writer, Cancel = cancel, Adapter = adapter, Stops = new StopSequences(request.Options.Stop),
                    Generator = request.Options.Seed is { } seed ? new Generator(unchecked((ulong)seed + (ulong)i * 0x9E3779B97F4A7C15UL)) : null,
                    Logits = new LogitsProcessor(request.Options, constraints[i]), Index = i, Siblings = choices,
                });
            if (!incoming.Writer.TryWrite(choices.All[0]))
            {
                FinishAll(choices.All[0], new ObjectDisposedException(nameof(InferenceEngine), "The inference engine is shutting down."));
                throw new ObjectDisposedException(nameof(InferenceEngine), "The inference engine is shutting down.");
            }
        }
        catch
        {
            Interlocked.Decrement(ref queued);
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

    /// <summary>Forgets a deleted adapter's weights (freed once no running request uses them).</summary>
    public void Evict(string adapter) => Adapters.Evict(adapter);

    void Loop()
    {
        using var noGrad = no_grad();
        while (!stopping)
        {
            bool idle = batches.Values.All(b => b.Rows.Count == 0 && b.Waiting.Count == 0);
            if (idle && !incoming.Reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult()) break;
            while (incoming.Reader.TryRead(out var sequence)) Enqueue(sequence);
            foreach (var batch in batches.Values)
            {
                Admit(batch);
                if (batch.Rows.Count > 0) DecodeStep(batch);
            }
            foreach (var key in batches.Where(b => b.Value.Retired && b.Value.Idle).Select(b => b.Key).ToList())
            {
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
                batch.Retired = true;
                batches[$"{request.BaseModel}\0retired {++retired}"] = batch;
                batch = null;
            }
            if (batch is null)
            {
                var model = ModelFolder.Load<CausalLanguageModel>(request.BaseFolder, Precision);
                batches[request.BaseModel] = batch = new Batch(model, new SlotKvCache(model, options.MaxBatch, model.ContextLength), version);
            }
            if (request.Prompt.Count >= batch.Model.ContextLength)
                throw new ArgumentException($"the prompt has {request.Prompt.Count} tokens; this model's context is {batch.Model.ContextLength}");
            if (request.Prompt.Any(t => (uint)t >= (uint)batch.Model.VocabSize))
                throw new ArgumentException($"the prompt holds token ids outside this model's vocabulary of {batch.Model.VocabSize}");
            if (request.Options.LogitBias?.Keys.Where(t => (uint)t >= (uint)batch.Model.VocabSize).Select(t => (int?)t).FirstOrDefault() is { } outside)
                throw new ArgumentException($"logit_bias names token {outside}, outside this model's vocabulary of {batch.Model.VocabSize}", "logit_bias");
            if (sequence.Siblings.All.Count > batch.Cache.Slots)
                throw new ArgumentException($"n={sequence.Siblings.All.Count} is more than the {batch.Cache.Slots} sequences decoded together here", "n");
            batch.Waiting.Enqueue(sequence);
        }
        catch (Exception e)
        {
            Interlocked.Decrement(ref queued);
            FinishAll(sequence, e);
        }
    }

    /// <summary>
    /// Prefills waiting requests into free slots, several prompts in one forward pass (right-padded; each row with its
    /// own adapter), up to <see cref="InferenceOptions.PrefillTokens"/> tokens, in arrival order. A request of n choices
    /// takes n slots but is prefilled once.
    /// </summary>
    void Admit(Batch batch)
    {
        while (batch.Waiting.TryPeek(out var first) && batch.Rows.Count + first.Siblings.All.Count <= batch.Cache.Slots)
        {
            var group = new List<Sequence>();
            int longest = 0, taken = 0;
            while (batch.Waiting.TryPeek(out var next) && batch.Rows.Count + taken + next.Siblings.All.Count <= batch.Cache.Slots)
            {
                int length = Math.Max(longest, next.Request.Prompt.Count);
                if (group.Count > 0 && length * (group.Count + 1) > options.PrefillTokens) break;
                batch.Waiting.Dequeue();
                Interlocked.Decrement(ref queued);
                if (next.Cancel.IsCancellationRequested) FinishAll(next, new OperationCanceledException(next.Cancel));
                else (group, longest, taken) = ([.. group, next], length, taken + next.Siblings.All.Count);
            }
            if (group.Count > 0) Prefill(batch, group, longest);
        }
    }

    void Prefill(Batch batch, List<Sequence> group, int length)
    {
        int first = batch.Rows.Count;
        try
        {
            using var scope = NewDisposeScope();
            batch.ClearAdapters();
            var slots = Enumerable.Range(first, group.Count).Select(i => (long)i).ToList();
            foreach (var state in batch.States.Values) state.narrow(0, first, group.Count).zero_();
            var lengths = tensor(group.Select(s => (long)s.Request.Prompt.Count).ToArray());                      // [n]
            var valid = arange(length, ScalarType.Int64).unsqueeze(0).lt(lengths.unsqueeze(1));                   // [n, length]
            using var rowAdapters = SetAdapters(batch, group, slots, valid);
            batch.Cache.BeginPrefill(first, group.Count, length);
            var ids = tensor(group.SelectMany(s => s.Request.Prompt.Select(t => (long)t).Concat(Enumerable.Repeat(0L, length - s.Request.Prompt.Count))).ToArray(),
                [group.Count, length]);                                                                        // [n, length]
            // A row's padding repeats its last position, so each row's largest position is its own (dynamic and LongRoPE
            // scale by it, per row); the padding's keys are masked and its outputs unread.
            var positions = arange(length, ScalarType.Int64).unsqueeze(0).minimum(lengths.unsqueeze(1) - 1);      // [n, length]
            // Causal, and no real token attends to another row's padding: keys past a row's length are masked.
            var mask = ones(length, length, ScalarType.Bool).tril().unsqueeze(0).logical_and(valid.unsqueeze(1)).unsqueeze(1);   // [n, 1, length, length]
            var logits = batch.Model.Forward(ids, positions, mask, batch.Cache);                                   // [n, length, vocab]
            batch.ClearAdapters();   // the decode step gathers the new row set
            var logitsRow = new List<int>();   // each new row's row of logits: its prompt's
            foreach (var s in group)
            {
                s.Length = s.Request.Prompt.Count;
                batch.Rows.Add(s);
                Interlocked.Increment(ref running);
                logitsRow.Add(logitsRow.Count);
            }
            for (int i = 0; i < group.Count; i++)   // the other choices: the prompt's keys, values and adapter state copied
                foreach (var choice in group[i].Siblings.All.Skip(1))
                {
                    batch.Cache.Move(first + i, batch.Rows.Count, group[i].Length);
                    foreach (var state in batch.States.Values) state[batch.Rows.Count].copy_(state[first + i]);
                    choice.Length = group[i].Length;
                    batch.Rows.Add(choice);
                    Interlocked.Increment(ref running);
                    logitsRow.Add(i);
                }
            for (int r = logitsRow.Count - 1; r >= 0; r--)   // from the last: a finished row is replaced by the batch's last row
            {
                var s = batch.Rows[first + r];
                try
                {
                    if (s.Abandoned) Finish(s, new OperationCanceledException(s.Cancel));
                    else if (!Step(batch, s, logits[logitsRow[r], s.Request.Prompt.Count - 1])) continue;
                }
                catch (Exception e)
                {
                    Finish(s, e);   // one row's failure (its sampling, say) is not its batchmates'
                }
                Remove(batch, first + r);
            }
        }
        catch (Exception e)
        {
            while (batch.Rows.Count > first) Remove(batch, batch.Rows.Count - 1);
            batch.ClearAdapters();   // the prefill's own row adapters are disposed; no layer may keep pointing at them
            foreach (var s in group) FinishAll(s, e);
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
            var lengths = tensor(rows.Select(r => r.Length).ToArray());                                   // [rows]
            batch.Cache.BeginDecode(lengths);
            var ids = tensor(rows.Select(r => (long)r.LastToken).ToArray(), [rows.Count, 1]);             // [rows, 1]
            long visible = rows.Max(r => r.Length) + 1;
            var mask = arange(visible, ScalarType.Int64).unsqueeze(0).le(lengths.unsqueeze(1)).view(rows.Count, 1, 1, visible);
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
    static RowAdapters SetAdapters(Batch batch, IReadOnlyList<Sequence> rows, IReadOnlyList<long> slots, Tensor? valid = null) =>
        RowAdapters.Attach(batch.Model, rows.Select(r => r.Adapter?.Entry.Adapter).ToList(), slots, batch.State, valid);

    /// <summary>Stops at the next token boundary, failing what is still running or waiting; then frees the models.</summary>
    public void Dispose()
    {
        EngineTelemetry.Untrack(this);
        stopping = true;
        incoming.Writer.TryComplete();
        thread.Join();
        var shutdown = new ObjectDisposedException(nameof(InferenceEngine), "The inference engine shut down.");
        while (incoming.Reader.TryRead(out var left)) FinishAll(left, shutdown);
        foreach (var b in batches.Values)
        {
            foreach (var s in b.Rows.Concat(b.Waiting)) FinishAll(s, shutdown);
            b.Dispose();
        }
    }
}
