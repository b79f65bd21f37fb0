using System.Runtime.CompilerServices;
using System.Text;
using System.Threading.Channels;
using AdapterService.Core.Adapters;
using AdapterService.Core.Formats;
using AdapterService.Core.Models;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>What to generate: the base model and (optionally) the adapter, each with the folder it is stored in.</summary>
public sealed record GenerationRequest(
    string BaseModel, string BaseFolder, string? Adapter, string? AdapterFolder, IReadOnlyList<int> Prompt, SamplingOptions Options);

/// <summary>A piece of generated text; the last one carries the finish reason ("stop" or "length").</summary>
public sealed record GenerationChunk(string Text, int PromptTokens, int CompletionTokens, string? FinishReason);

/// <summary>
/// Runs generation on one dedicated thread that owns the models (TorchSharp dispose scopes are per thread),
/// fed by a channel. Each request gets its own adapter through the layers' adapter slots, never by merging weights.
/// Base models and adapter weights stay loaded after first use.
/// </summary>
public sealed class InferenceEngine : IDisposable
{
    /// <summary>A request to run, or (Request null) an adapter to forget.</summary>
    sealed record Work(GenerationRequest? Request, string? Evict, ChannelWriter<GenerationChunk>? Output, CancellationToken Cancel);

    readonly Channel<Work> queue = Channel.CreateUnbounded<Work>(new UnboundedChannelOptions { SingleReader = true });
    readonly Dictionary<string, LlamaForCausalLM> bases = [];
    readonly Dictionary<string, Dictionary<string, LoraWeights>> adapters = [];
    readonly Thread thread;

    public InferenceEngine()
    {
        thread = new Thread(Loop) { IsBackground = true, Name = "inference" };
        thread.Start();
    }

    public async IAsyncEnumerable<GenerationChunk> Generate(GenerationRequest request, [EnumeratorCancellation] CancellationToken cancel = default)
    {
        var output = Channel.CreateUnbounded<GenerationChunk>(new UnboundedChannelOptions { SingleWriter = true, SingleReader = true });
        await queue.Writer.WriteAsync(new Work(request, null, output.Writer, cancel), cancel);
        await foreach (var chunk in output.Reader.ReadAllAsync(cancel))
            yield return chunk;
    }

    /// <summary>Forgets a deleted adapter's weights.</summary>
    public void Evict(string adapter) => queue.Writer.TryWrite(new Work(null, adapter, null, CancellationToken.None));

    void Loop()
    {
        using var noGrad = no_grad();
        while (queue.Reader.WaitToReadAsync().AsTask().GetAwaiter().GetResult())
            while (queue.Reader.TryRead(out var work))
            {
                if (work.Evict is { } adapter) { Forget(adapter); continue; }
                try
                {
                    Run(work.Request!, work.Output!, work.Cancel);
                    work.Output!.TryComplete();
                }
                catch (Exception e)
                {
                    work.Output!.TryComplete(e);
                }
            }
    }

    void Forget(string adapter)
    {
        if (!adapters.Remove(adapter, out var weights)) return;
        foreach (var w in weights.Values) { w.A.Dispose(); w.B.Dispose(); }
    }

    void Run(GenerationRequest request, ChannelWriter<GenerationChunk> output, CancellationToken cancel)
    {
        var model = BaseModel(request);
        var layers = model.LinearLayers().ToList();
        var weights = request.Adapter is null ? null : AdapterWeights(request, model);
        var eos = model.Config.EosTokenId ?? ByteTokenizer.End;
        int context = model.Config.MaxPositionEmbeddings, prompt = request.Prompt.Count;
        if (prompt >= context) throw new ArgumentException($"the prompt has {prompt} tokens; this model's context is {context}");

        var slots = new List<RowLora>();
        try
        {
            foreach (var (path, layer) in layers)
                if (weights?.GetValueOrDefault(path) is { } w)
                {
                    var rows = new RowLora([w], layer.InFeatures, layer.OutFeatures);
                    slots.Add(rows);
                    layer.Adapter = rows;
                }
            Decode(model, request, eos, context, output, cancel);
        }
        finally
        {
            foreach (var (_, layer) in layers) layer.Adapter = null;
            foreach (var s in slots) s.Dispose();
        }
    }

    static void Decode(LlamaForCausalLM model, GenerationRequest request, int eos, int context,
        ChannelWriter<GenerationChunk> output, CancellationToken cancel)
    {
        var options = request.Options;
        using var cache = new KvCache(model.Config.NumHiddenLayers);
        using var generator = options.Seed is { } seed ? new Generator((ulong)seed) : null;
        var utf8 = Encoding.UTF8.GetDecoder();
        var stops = new StopSequences(options.Stop);
        int prompt = request.Prompt.Count, produced = 0;
        long[] input = request.Prompt.Select(i => (long)i).ToArray();
        while (true)
        {
            cancel.ThrowIfCancellationRequested();
            int next;
            using (var scope = NewDisposeScope())
            {
                var logits = model.Forward(tensor(input, [1, input.Length]), cache);   // [1, n, vocab]
                next = Sampler.Next(logits[0, -1], options, generator);
            }
            string emit = "", finish;
            bool stopped = false;
            if (next == eos) finish = "stop";
            else
            {
                produced++;
                (emit, stopped) = stops.Push(ByteTokenizer.IsByte(next) ? Chars(utf8, [(byte)next], flush: false) : "");
                finish = stopped ? "stop" : produced >= options.MaxTokens || prompt + produced >= context ? "length" : "";
            }
            if (finish == "")
            {
                if (emit.Length > 0) output.TryWrite(new GenerationChunk(emit, prompt, produced, null));
                input = [next];
                continue;
            }
            if (!stopped) emit += Chars(utf8, [], flush: true) + stops.Flush();   // text held back for a stop that never came
            output.TryWrite(new GenerationChunk(emit, prompt, produced, finish));
            return;
        }
    }

    static string Chars(Decoder decoder, byte[] bytes, bool flush)
    {
        var chars = new char[decoder.GetCharCount(bytes, flush)];
        decoder.GetChars(bytes, chars, flush);
        return new string(chars);
    }

    LlamaForCausalLM BaseModel(GenerationRequest request)
    {
        if (!bases.TryGetValue(request.BaseModel, out var model))
            bases[request.BaseModel] = model = ModelFolder.Load(request.BaseFolder);
        return model;
    }

    Dictionary<string, LoraWeights> AdapterWeights(GenerationRequest request, LlamaForCausalLM model)
    {
        if (!adapters.TryGetValue(request.Adapter!, out var weights))
        {
            using var scope = NewDisposeScope();
            var (_, loaded) = LoraAdapter.Load(request.AdapterFolder!, model);
            foreach (var w in loaded.Values) { w.A.DetachFromDisposeScope(); w.B.DetachFromDisposeScope(); }
            adapters[request.Adapter!] = weights = loaded;
        }
        return weights;
    }

    public void Dispose()
    {
        queue.Writer.TryComplete();
        thread.Join(TimeSpan.FromSeconds(10));
        foreach (var m in bases.Values) m.Dispose();
        foreach (var a in adapters.Keys.ToList()) Forget(a);
    }
}
