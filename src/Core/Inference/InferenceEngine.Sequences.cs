using System.Threading.Channels;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using AdapterService.Core.Text;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>A request being generated and the running batch of one base model; how a sampled token becomes the request's text.</summary>
public sealed partial class InferenceEngine
{
    sealed class Sequence
    {
        public required GenerationRequest Request { get; init; }
        public required ChannelWriter<GenerationChunk> Output { get; init; }
        public required CancellationToken Cancel { get; init; }
        public required AdapterCache.Lease? Adapter { get; init; }
        public Generator? Generator { get; init; }
        /// <summary>Constrained decoding's mask and state, when the request has one.</summary>
        public ILogitsConstraint? Constraint { get; init; }
        /// <summary>The request's text so far, token by token (made on its first token, with the tokenizer that serves it).</summary>
        public StreamingDetokenizer? Text;
        public required StopSequences Stops { get; init; }
        public long Length;       // positions in the cache
        public int Produced;
        public int LastToken;
    }

    /// <summary>One base model with its running batch.</summary>
    sealed class Batch(CausalLanguageModel model, SlotKvCache cache) : IDisposable
    {
        public CausalLanguageModel Model { get; } = model;
        public SlotKvCache Cache { get; } = cache;
        public List<Sequence> Rows { get; } = [];
        public Queue<Sequence> Waiting { get; } = [];
        public RowAdapters? Adapters;   // per-row adapters of the current rows, rebuilt when rows join or leave
        /// <summary>Per-sequence adapter state by layer and width (Lily's router sums), [slots, width], kept by slot like the KV cache.</summary>
        public Dictionary<(string, int), Tensor> States { get; } = [];

        public Tensor State(string path, int width) =>
            States.TryGetValue((path, width), out var t) ? t : States[(path, width)] = zeros(Cache.Slots, width).DetachFromDisposeScope();

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

    /// <summary>The sequence's next token from its logits [vocab]: masked first when it is constrained.</summary>
    static int Sample(Sequence s, Tensor logits)
    {
        if (s.Constraint is { } constraint)
        {
            logits = logits.to_type(ScalarType.Float32, copy: true);
            constraint.Mask(logits);
            if (logits.isneginf().all().item<bool>()) throw new InvalidOperationException("The output constraint allows no next token.");
        }
        return Sampler.Next(logits, s.Request.Options, s.Generator);
    }

    /// <summary>Takes the sampled token; returns true when the sequence is finished (and has been completed).</summary>
    bool Emit(Batch batch, Sequence s, int token)
    {
        s.Constraint?.Advance(token);
        var options = s.Request.Options;
        int context = batch.Model.ContextLength;
        var tokenizer = s.Request.Tokenizer ?? ByteTokens;
        string emit = "", finish;
        bool stopped = false;
        // Any of the model's end ids (Llama 3 Instruct lists several) or its text rules' (generation_config, the end of a chat turn).
        if (batch.Model.EosTokenIds.Contains(token) || (s.Request.EosIds ?? tokenizer.EosIds).Contains(token)) finish = "stop";
        else
        {
            s.Produced++;
            Interlocked.Increment(ref generatedTokens);
            s.LastToken = token;
            // Constrained output is the tokens' bytes as the constraint checked them: no clean-up of spaces.
            s.Text ??= new StreamingDetokenizer(tokenizer, cleanUpSpaces: s.Constraint is null);
            (emit, stopped) = s.Stops.Push(s.Text.Push(token));
            finish = stopped ? "stop" : s.Produced >= options.MaxTokens || s.Length >= context ? "length" : "";
        }
        int prompt = s.Request.Prompt.Count;
        if (finish == "")
        {
            if (emit.Length > 0) s.Output.TryWrite(new GenerationChunk(emit, prompt, s.Produced, null));
            return false;
        }
        if (!stopped)
        {
            // Text held back: the detokenizer's unfinished end, then what waited for a stop that never came.
            var (tail, tailStopped) = s.Stops.Push(s.Text?.Flush() ?? "");
            emit += tail + (tailStopped ? "" : s.Stops.Flush());
            if (tailStopped) finish = "stop";
        }
        s.Output.TryWrite(new GenerationChunk(emit, prompt, s.Produced, finish));
        Finish(s, null);
        return true;
    }

    static void Finish(Sequence s, Exception? error)
    {
        s.Output.TryComplete(error);
        s.Adapter?.Dispose();
        s.Generator?.Dispose();
    }
}
