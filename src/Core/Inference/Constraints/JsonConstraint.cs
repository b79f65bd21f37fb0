using System.Runtime.CompilerServices;
using AdapterService.Core.Text;
using static AdapterService.Core.Inference.Constraints.JsonAutomaton;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference.Constraints;

/// <summary>
/// Constrained decoding of one sequence to a <see cref="JsonGrammar"/>: before each sampling step the logits of every
/// token that cannot continue a valid document are set to −∞ (the end ids only once the document is complete), and
/// each sampled token advances the automaton by its bytes. The allowed set of a state is found once by walking the
/// tokenizer's <see cref="TokenVocabulary"/> trie with the automaton (a prefix no cursor survives prunes its subtree)
/// and kept in <see cref="JsonMasks"/>, shared by every sequence of the same schema and tokenizer.
/// </summary>
public sealed class JsonConstraint
{
    readonly JsonMasks masks;
    readonly int[] eosIds;
    List<Frame> state, spare = [];

    /// <summary>Why a tokenizer cannot be constrained, or null: it must spell every printable ASCII byte and have an end id.</summary>
    public static string? Unsupported(ITextTokenizer tokenizer, IReadOnlyCollection<int> eosIds) =>
        !TokenVocabulary.For(tokenizer).SpellsAscii ? "this model's vocabulary has no single token for every printable ASCII character"
        : eosIds.Count == 0 ? "this model has no end-of-sequence token" : null;

    public JsonConstraint(JsonGrammar grammar, ITextTokenizer tokenizer, IReadOnlyCollection<int> eosIds)
    {
        masks = JsonMasks.For(grammar, TokenVocabulary.For(tokenizer));
        this.eosIds = [.. eosIds];
        state = [Start(grammar)];
    }

    /// <summary>The document is complete on some cursor (an end id is allowed).</summary>
    public bool IsComplete => state.Any(JsonAutomaton.IsComplete);
    /// <summary>Some byte may still follow.</summary>
    public bool CanContinue => state.Any(JsonAutomaton.CanContinue);

    /// <summary>Whether token <paramref name="id"/> may come next.</summary>
    public bool Allows(int id)
    {
        if (eosIds.Contains(id)) return IsComplete;
        var bits = masks.Get(state);
        return id >= 0 && id < masks.Vocabulary.Size && (bits[id >> 6] & 1UL << id) != 0;
    }

    /// <summary>Sets every disallowed entry of <paramref name="logits"/> [vocab] to −∞ in place.</summary>
    public void Mask(Tensor logits)
    {
        var bits = masks.Get(state);
        int size = (int)logits.shape[0];
        var blocked = new bool[size];
        int known = Math.Min(size, masks.Vocabulary.Size);
        for (int i = 0; i < known; i++) blocked[i] = (bits[i >> 6] & 1UL << i) == 0;
        for (int i = known; i < size; i++) blocked[i] = true;
        if (IsComplete) foreach (int id in eosIds) if (id >= 0 && id < size) blocked[id] = false;
        using var mask = tensor(blocked, device: logits.device);
        logits.masked_fill_(mask, double.NegativeInfinity);
    }

    /// <summary>Takes the sampled token. An end id or a token the grammar refuses leaves the state as it was (the engine stops on an end id; a refused one cannot be sampled through <see cref="Mask"/>).</summary>
    public void Advance(int id)
    {
        if (id < 0 || id >= masks.Vocabulary.Size || masks.Vocabulary.Bytes[id] is not { } bytes) return;
        foreach (byte b in bytes)
        {
            JsonAutomaton.Advance(state, b, spare);
            if (spare.Count == 0) throw new InvalidOperationException($"token {id} does not continue the JSON document");
            (state, spare) = (spare, state);
        }
    }
}

/// <summary>The allowed tokens of each automaton state reached so far, for one grammar over one vocabulary (bounded; cleared when full).</summary>
public sealed class JsonMasks
{
    /// <summary>Masks kept per grammar and vocabulary (each is vocabulary/8 bytes: 19 KB for Qwen's 151k tokens).</summary>
    public const int MaxKept = 512;
    static readonly ConditionalWeakTable<TokenVocabulary, Dictionary<string, JsonMasks>> Shared = [];

    public TokenVocabulary Vocabulary { get; }
    readonly Dictionary<StateKey, ulong[]> kept = [];
    readonly List<Frame>[] buffers;
    /// <summary>Masks computed (cache misses) and served from the cache, for benchmarks.</summary>
    public int Computed, Reused;

    JsonMasks(TokenVocabulary vocabulary)
    {
        Vocabulary = vocabulary;
        buffers = Enumerable.Range(0, vocabulary.MaxTokenBytes + 1).Select(_ => new List<Frame>()).ToArray();
    }

    public static JsonMasks For(JsonGrammar grammar, TokenVocabulary vocabulary)
    {
        var byKey = Shared.GetValue(vocabulary, _ => []);
        lock (byKey)
        {
            if (byKey.TryGetValue(grammar.Key, out var masks)) return masks;
            if (byKey.Count >= 64) byKey.Clear();
            return byKey[grammar.Key] = new JsonMasks(vocabulary);
        }
    }

    /// <summary>The bit set of tokens (end ids aside) that keep <paramref name="state"/> a valid document prefix.</summary>
    public ulong[] Get(IReadOnlyList<Frame> state)
    {
        lock (kept)
        {
            var key = new StateKey([.. state]);
            if (kept.TryGetValue(key, out var bits)) { Reused++; return bits; }
            bits = new ulong[(Vocabulary.Size + 63) / 64];
            Walk(0, state, 0, bits);
            if (kept.Count >= MaxKept) kept.Clear();
            kept[key] = bits;
            Computed++;
            return bits;
        }
    }

    void Walk(int node, IReadOnlyList<Frame> state, int depth, ulong[] bits)
    {
        var v = Vocabulary;
        var next = buffers[depth];
        for (int c = v.ChildStart[node], end = c + v.ChildCount[node]; c < end; c++)
        {
            JsonAutomaton.Advance(state, v.Label[c], next);
            if (next.Count == 0) continue;
            for (int t = v.TokenStart[c], tEnd = t + v.TokenCount[c]; t < tEnd; t++)
            {
                int id = v.TokenIds[t];
                bits[id >> 6] |= 1UL << id;
            }
            if (v.ChildCount[c] > 0) Walk(c, next, depth + 1, bits);
        }
        next.Clear();
    }

    /// <summary>A state as a key: its cursors in hash order.</summary>
    sealed class StateKey : IEquatable<StateKey>
    {
        readonly Frame[] frames;
        readonly int hash;

        public StateKey(Frame[] frames)
        {
            Array.Sort(frames, (x, y) => x.GetHashCode().CompareTo(y.GetHashCode()));
            this.frames = frames;
            var h = new HashCode();
            foreach (var f in frames) h.Add(f.GetHashCode());
            hash = h.ToHashCode();
        }

        public bool Equals(StateKey? other) => other is not null && other.hash == hash && other.frames.AsSpan().SequenceEqual(frames);
        public override bool Equals(object? obj) => Equals(obj as StateKey);
        public override int GetHashCode() => hash;
    }
}
