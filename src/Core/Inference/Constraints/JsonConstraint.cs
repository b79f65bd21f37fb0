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
public sealed class JsonConstraint : ILogitsConstraint
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

    /// <summary>The cursors now (their top frames first), for diagnostics.</summary>
    public string Describe() => string.Join(" | ", state.Select(f =>
    {
        var parts = new List<string>();
        for (var x = f; x is not null; x = x.Parent) parts.Add($"{x.Kind}({x.A},{x.B},{x.C})");
        return string.Join("<", parts);
    }));

    /// <summary>The document is complete on some cursor (an end id is allowed).</summary>
    public bool IsComplete => state.Any(JsonAutomaton.IsComplete);
    /// <summary>Some byte may still follow.</summary>
    public bool CanContinue => state.Any(JsonAutomaton.CanContinue);

    /// <summary>The tokens that may come next, in id order (end ids last).</summary>
    public List<int> Allowed()
    {
        var bits = masks.Get(state).Bits;
        var ids = new List<int>();
        for (int w = 0; w < bits.Length; w++)
            for (ulong word = bits[w]; word != 0; word &= word - 1)
                ids.Add(w * 64 + System.Numerics.BitOperations.TrailingZeroCount(word));
        if (IsComplete) ids.AddRange(eosIds);
        return ids;
    }

    /// <summary>Whether token <paramref name="id"/> may come next.</summary>
    public bool Allows(int id)
    {
        if (eosIds.Contains(id)) return IsComplete;
        var bits = masks.Get(state).Bits;
        return id >= 0 && id < masks.Vocabulary.Size && (bits[id >> 6] & 1UL << id) != 0;
    }

    /// <summary>Sets every disallowed entry of <paramref name="logits"/> [vocab] to −∞ in place (entries past the tokenizer's vocabulary too).</summary>
    public void Mask(Tensor logits)
    {
        var blocked = masks.Blocked(state);
        int size = (int)logits.shape[0], known = Math.Min(size, masks.Vocabulary.Size);
        using var scope = NewDisposeScope();
        var ends = IsComplete ? tensor(eosIds.Where(id => id >= 0 && id < size).Select(id => (long)id).ToArray()) : null;
        var endLogits = ends is null ? null : logits.index_select(0, ends);
        logits.narrow(0, 0, known).masked_fill_(blocked.narrow(0, 0, known).to(logits.device), double.NegativeInfinity);
        if (size > known) logits.narrow(0, known, size - known).fill_(double.NegativeInfinity);
        if (ends is not null) logits.index_copy_(0, ends, endLogits!);
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
    /// <summary>Masks kept per grammar and vocabulary (each is vocabulary × 9/8 bytes, bits and bool tensor: 170 KB for Qwen's 151k tokens).</summary>
    public const int MaxKept = 256;
    static readonly ConditionalWeakTable<TokenVocabulary, Dictionary<string, JsonMasks>> Shared = [];

    public TokenVocabulary Vocabulary { get; }
    readonly Dictionary<StateKey, Entry> kept = [];

    /// <summary>A state's allowed tokens as bits, and (made on first use) as a bool tensor of the blocked ones.</summary>
    public sealed class Entry(ulong[] bits)
    {
        public ulong[] Bits { get; } = bits;
        public Tensor? Blocked;
    }

    /// <summary>The blocked tokens of <paramref name="state"/> as a bool tensor [vocabulary] (kept with the state's bits; never disposed while kept).</summary>
    public Tensor Blocked(IReadOnlyList<Frame> state)
    {
        var entry = Get(state);
        lock (entry)
        {
            if (entry.Blocked is null)
            {
                var blocked = new bool[Vocabulary.Size];
                for (int i = 0; i < blocked.Length; i++) blocked[i] = (entry.Bits[i >> 6] & 1UL << i) == 0;
                entry.Blocked = tensor(blocked).DetachFromDisposeScope();   // evicted entries are left to the finalizer: a caller may still hold one
            }
            return entry.Blocked;
        }
    }
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
    public Entry Get(IReadOnlyList<Frame> state)
    {
        lock (kept)
        {
            var key = new StateKey([.. state]);
            if (kept.TryGetValue(key, out var known)) { Reused++; return known; }
            ulong[] bits;
            if (state is [{ Kind: FrameKind.String, B: 0, C: 0 } inString])
            {
                // Inside a string, plain content tokens depend only on how many characters the string may still take.
                bits = (ulong[])Vocabulary.PlainUpTo((inString.Node?.MaxLength ?? int.MaxValue) - inString.A).Clone();
                Walk(Vocabulary.NotPlain, 0, state, 0, bits);
            }
            else
            {
                bits = new ulong[(Vocabulary.Size + 63) / 64];
                Walk(Vocabulary.All, 0, state, 0, bits);
            }
            if (kept.Count >= MaxKept) kept.Clear();
            Computed++;
            return kept[key] = new Entry(bits);
        }
    }

    void Walk(TokenVocabulary.Trie v, int node, IReadOnlyList<Frame> state, int depth, ulong[] bits)
    {
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
            if (v.ChildCount[c] > 0) Walk(v, c, next, depth + 1, bits);
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
