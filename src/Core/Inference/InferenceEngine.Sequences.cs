using System.Threading.Channels;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>A request being generated and the running batch of one base model; how a sampled token becomes the request's text.</summary>
public sealed partial class InferenceEngine
{
    /// <summary>One choice of a request being generated (a request of <c>n</c> choices has n, prefilled once, each a row of its own).</summary>
    sealed class Sequence
    {
        public required GenerationRequest Request { get; init; }
        public required ChannelWriter<GenerationChunk> Output { get; init; }
        public required CancellationToken Cancel { get; init; }
        public required AdapterCache.Lease? Adapter { get; init; }
        public Generator? Generator { get; init; }
        /// <summary>The request's text so far, token by token (made on its first token, with the tokenizer that serves it).</summary>
        public StreamingDetokenizer? Text;
        public required StopSequences Stops { get; init; }
        public required LogitsProcessor Logits { get; init; }
        /// <summary>Which choice of the request this is.</summary>
        public int Index { get; init; }
        /// <summary>The request's choices, this one among them; shared by all of them.</summary>
        public required Choices Siblings { get; init; }
        /// <summary>Logprobs of the tokens generated since the last chunk (when asked for).</summary>
        public List<TokenLogprob>? Pending;
        /// <summary>The tokens its slot holds before it decodes: the prompt, or after a preemption the prompt and every generated token but the last.</summary>
        public IReadOnlyList<int> Input { get => input ?? Request.Prompt; set => input = value; }
        IReadOnlyList<int>? input;
        /// <summary>The tokens generated (end ids not counted), kept so a preempted sequence can be prefilled again.</summary>
        public List<int> Generated { get; } = [];
        /// <summary>Preempted: its slot is being filled again; it rejoins the rows without sampling (its next input is <see cref="LastToken"/>).</summary>
        public bool Resuming;
        public long Length;       // positions in the cache (while prefilling: the input's positions cached so far)
        /// <summary>While its prompt is being prefilled: the cache slot it is written into.</summary>
        public int Slot = -1;
        /// <summary>The prefix cache's keys of its prompt's full blocks (null: not cached).</summary>
        public string[]? BlockKeys;
        public int Produced;
        public int LastToken;
        public bool Finished;
        /// <summary>The client went away, or a sibling choice failed (the request's answer is that error).</summary>
        public bool Abandoned => Cancel.IsCancellationRequested || Siblings.Failed;
    }

    /// <summary>The choices of one request: the output stream and adapter lease they share are closed when the last one ends.</summary>
    sealed class Choices
    {
        public List<Sequence> All { get; } = [];
        public int Open;
        public bool Failed;
        /// <summary>Prompt tokens that came from the prefix cache.</summary>
        public int Cached;
        /// <summary>The request as admission sees it; whether it started; what to tell admission when the last choice ends.</summary>
        public required AdmissionRequest Admitted;
        public bool Started;
        public Action? Ended;
        /// <summary>Choices still to join the running rows (all n at first; after a preemption, the unfinished ones).</summary>
        public int Joining;
        /// <summary>When it (last) started, in the engine's count of starts: the newest is preempted first.</summary>
        public long StartOrder;
    }

    /// <summary>One base model with its running batch.</summary>
    sealed class Batch : IDisposable
    {
        /// <summary>A base model's batch; running rows take the cache's slots [0, <paramref name="maxRows"/>), prompts being prefilled the slots after them.</summary>
        public Batch(CausalLanguageModel model, SlotKvCache cache, string version, int maxRows)
        {
            (Model, Cache, Version, MaxRows) = (model, cache, version, maxRows);
            for (int slot = cache.Slots - 1; slot >= maxRows; slot--) FreeStaging.Push(slot);
        }

        public CausalLanguageModel Model { get; }
        public int MaxRows { get; }
        /// <summary>The base folder's <see cref="ModelFolder.Version"/> the model was loaded from.</summary>
        public string Version { get; }
        /// <summary>The base folder and its version: the prefix cache's base key.</summary>
        public string BaseKey { get; init; } = "";
        /// <summary>Replaced by a newer version of its base: finishes its rows, takes no new ones, and is freed when idle.</summary>
        public bool Retired;
        public bool Idle => Rows.Count == 0 && Prefilling.Count == 0 && Waiting.Count == 0;
        public SlotKvCache Cache { get; }
        public List<Sequence> Rows { get; } = [];
        /// <summary>Requests whose prompt is partly in the cache (the first choice of each), in arrival order.</summary>
        public List<Sequence> Prefilling { get; } = [];
        /// <summary>Cache slots for prompts being prefilled that no prompt holds.</summary>
        public Stack<int> FreeStaging { get; } = [];
        /// <summary>Row places the running rows and the prompts being prefilled (the choices each has still to add) hold.</summary>
        public int Reserved => Rows.Count + Prefilling.Sum(s => s.Siblings.Joining);
        /// <summary>Requests waiting to start, in arrival order.</summary>
        public List<Sequence> Waiting { get; } = [];
        public RowAdapters? Adapters;   // per-row adapters of the current rows, rebuilt when rows join or leave
        /// <summary>Per-sequence adapter state by layer and width (Lily's router sums), [slots, width], kept by slot like the KV cache.</summary>
        public Dictionary<(string, int), Tensor> States { get; } = [];

        public Tensor State(string path, int width) =>
            States.TryGetValue((path, width), out var t) ? t : States[(path, width)] = zeros(Cache.Slots, width, device: Cache.Device).DetachFromDisposeScope();

        public void Dispose()
        {
            ClearAdapters();
            foreach (var t in States.Values) t.Dispose();
            Cache.Dispose();
            Model.Dispose();
        }

        public void ClearAdapters()
        {
            TrainableAdapter.Detach(Model);
            Adapters?.Dispose(true);
            Adapters = null;
        }
    }

    /// <summary>
    /// Picks row <paramref name="s"/>'s next token from its raw <paramref name="logits"/> [vocab] (through its logits step and
    /// sampler; logprobs from the raw ones) and takes it; returns true when the sequence is finished (and has been completed).
    /// </summary>
    bool Step(Batch batch, Sequence s, Tensor logits)
    {
        var options = s.Request.Options;
        int token = Sampler.Next(s.Logits.Apply(logits), options, s.Generator);
        var logprob = options.Logprobs is { } top ? TokenLogprob.Of(logits, token, top, s.Request.Tokenizer ?? ByteTokens) : null;
        return Emit(batch, s, token, logprob);
    }

    /// <summary>Takes the sampled token; returns true when the sequence is finished (and has been completed).</summary>
    bool Emit(Batch batch, Sequence s, int token, TokenLogprob? logprob)
    {
        var options = s.Request.Options;
        int context = batch.Model.ContextLength;
        var tokenizer = s.Request.Tokenizer ?? ByteTokens;
        string emit = "", finish;
        bool stopped = false;
        // Any of the model's end ids (Llama 3 Instruct lists several) or its text rules' (generation_config, the end of a chat turn).
        bool end = batch.Model.EosTokenIds.Contains(token) || (s.Request.EosIds ?? tokenizer.EosIds).Contains(token);
        s.Logits.Accept(token, generated: !end);
        if (end) finish = "stop";   // an end id is not part of the answer: no text, no logprob (as OpenAI)
        else
        {
            s.Produced++;
            Interlocked.Increment(ref generatedTokens);
            s.LastToken = token;
            s.Generated.Add(token);
            if (logprob is not null) (s.Pending ??= []).Add(logprob);
            // Constrained output is the tokens' bytes as the constraint checked them: no clean-up of spaces.
            s.Text ??= new StreamingDetokenizer(tokenizer, cleanUpSpaces: s.Request.Constraint is null);
            (emit, stopped) = s.Stops.Push(s.Text.Push(token));
            finish = stopped ? "stop" : s.Produced >= options.MaxTokens || s.Length >= context ? "length" : "";
        }
        int prompt = s.Request.Prompt.Count;
        if (finish == "")
        {
            if (emit.Length > 0) s.Output.TryWrite(new GenerationChunk(emit, prompt, s.Produced, null, s.Index, TakePending(s), s.Siblings.Cached));
            return false;
        }
        if (!stopped)
        {
            // Text held back: the detokenizer's unfinished end, then what waited for a stop that never came.
            var (tail, tailStopped) = s.Stops.Push(s.Text?.Flush() ?? "");
            emit += tail + (tailStopped ? "" : s.Stops.Flush());
            if (tailStopped) finish = "stop";
        }
        s.Output.TryWrite(new GenerationChunk(emit, prompt, s.Produced, finish, s.Index, TakePending(s) ?? (options.Logprobs is null ? null : []), s.Siblings.Cached));
        Finish(s, null);
        return true;
    }

    static List<TokenLogprob>? TakePending(Sequence s)
    {
        var taken = s.Pending;
        s.Pending = null;
        return taken;
    }

    /// <summary>Ends one choice; the request's output (and adapter lease) ends with its last choice, or at once with an error.</summary>
    static void Finish(Sequence s, Exception? error)
    {
        if (s.Finished) return;
        s.Finished = true;
        s.Generator?.Dispose();
        if (error is not null)
        {
            s.Siblings.Failed = true;   // the other choices stop at their next token
            s.Output.TryComplete(error);
        }
        if (Interlocked.Decrement(ref s.Siblings.Open) > 0) return;
        s.Output.TryComplete();
        s.Adapter?.Dispose();
        s.Siblings.Ended?.Invoke();
    }

    /// <summary>Ends every choice of a request that has not started (failed before or while waiting, or at shutdown).</summary>
    static void FinishAll(Sequence first, Exception error)
    {
        foreach (var s in first.Siblings.All) Finish(s, error);
    }
}
