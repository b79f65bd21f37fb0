using System.Security.Cryptography;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// Keys and values of prompt prefixes, reused by later requests that start with the same tokens in the same scope: the
/// same base version, the same adapter content (<see cref="Adapters.ServedAdapter.ContentKey"/>, a hash of its files, never
/// its name: a name reused for other weights is another scope), the same partition (the project, unless
/// <see cref="InferenceOptions.PrefixCacheAcrossProjects"/>: a shared prefix is a timing side channel between projects).
/// Block-granular, as vLLM's automatic prefix caching: a prompt is cut into blocks of <see cref="BlockTokens"/>; block i is
/// keyed by a SHA-256 chained from the scope over every token up to its end, and holds its positions' keys and values in
/// every layer and the adapter's per-sequence state after its last token (Lily's router sums), so a hit may end at any
/// block. A request reuses the longest chain of its full blocks that is cached, always leaving its last token to compute.
/// Least recently used blocks that no cached block extends are evicted beyond the byte budget; blocks a request is
/// copying are pinned. Deleting a base or an adapter forgets its scopes at once (content keys already make stale hits impossible).
/// </summary>
public sealed class PrefixCache(long budgetBytes, int blockTokens) : IDisposable
{
    public sealed class Block
    {
        public required string Key { get; init; }
        public required string? Parent { get; init; }
        public required string Base { get; init; }
        public required string Adapter { get; init; }
        /// <summary>Per layer: keys and values of the block's positions [kv_heads, block, head_dim].</summary>
        public required Tensor[] Keys { get; init; }
        public required Tensor[] Values { get; init; }
        /// <summary>The adapter's per-sequence state after the block's last token, by layer path and width.</summary>
        public required Dictionary<(string Path, int Width), Tensor> States { get; init; }
        public long Bytes { get; init; }
        internal int Children, Pins;
        internal bool Dropped;
        internal LinkedListNode<Block>? Node;

        internal void Free()
        {
            foreach (var t in Keys.Concat(Values).Concat(States.Values)) t.Dispose();
        }
    }

    readonly Lock gate = new();
    readonly Dictionary<string, Block> blocks = [];
    readonly LinkedList<Block> recency = [];   // most recently used first
    long bytes;

    public int BlockTokens { get; } = blockTokens;
    public long Bytes { get { lock (gate) return bytes; } }
    public int Count { get { lock (gate) return blocks.Count; } }

    /// <summary>The chain keys of the prompt's full blocks, first to last, in the scope of (partition, base, adapter).</summary>
    public string[] Keys(string partition, string baseKey, string adapterKey, IReadOnlyList<int> prompt)
    {
        var keys = new string[prompt.Count / BlockTokens];
        byte[] parent = SHA256.HashData(System.Text.Encoding.UTF8.GetBytes($"{partition}\0{baseKey}\0{adapterKey}"));
        var tokens = new byte[BlockTokens * sizeof(int)];
        for (int b = 0; b < keys.Length; b++)
        {
            for (int i = 0; i < BlockTokens; i++) BitConverter.TryWriteBytes(tokens.AsSpan(i * sizeof(int)), prompt[b * BlockTokens + i]);
            parent = SHA256.HashData([.. parent, .. tokens]);
            keys[b] = Convert.ToHexString(parent);
        }
        return keys;
    }

    /// <summary>
    /// The cached chain of <paramref name="keys"/> from the first, at most <paramref name="most"/> blocks, pinned (so
    /// not freed while copied) and marked used; <see cref="Unpin"/> them after copying.
    /// </summary>
    public List<Block> Match(IReadOnlyList<string> keys, int most)
    {
        lock (gate)
        {
            var found = new List<Block>();
            foreach (string key in keys.Take(most))
            {
                if (!blocks.TryGetValue(key, out var block)) break;
                block.Pins++;
                found.Add(block);
            }
            for (int i = found.Count - 1; i >= 0; i--)   // a block more recent than what extends it, so leaves go first
            {
                recency.Remove(found[i].Node!);
                recency.AddFirst(found[i].Node!);
            }
            return found;
        }
    }

    public void Unpin(IEnumerable<Block> pinned)
    {
        lock (gate)
            foreach (var block in pinned)
                if (--block.Pins == 0 && block.Dropped) block.Free();
    }

    public bool Contains(string key)
    {
        lock (gate) return blocks.ContainsKey(key);
    }

    /// <summary>
    /// Adds a block (its tensors now the cache's; freed at once when it is cached already, unreachable because its parent
    /// is not, or over the budget alone).
    /// </summary>
    public void Add(Block block)
    {
        lock (gate)
        {
            if (block.Bytes > budgetBytes || blocks.ContainsKey(block.Key) || (block.Parent is { } p && !blocks.ContainsKey(p)))
            {
                block.Free();
                return;
            }
            if (block.Parent is { } parent) blocks[parent].Children++;
            blocks[block.Key] = block;
            block.Node = recency.AddFirst(block);
            bytes += block.Bytes;
            for (bool dropped = true; dropped && bytes > budgetBytes;)   // a dropped leaf may make its parent one
            {
                dropped = false;
                for (var node = recency.Last; node is not null && bytes > budgetBytes;)
                {
                    var previous = node.Previous;
                    if (node.Value.Children == 0 && node.Value != block) dropped |= Drop(node.Value);
                    node = previous;
                }
            }
        }
    }

    /// <summary>Forgets every block of a base version or of an adapter's content (deleted, or imported again).</summary>
    public void Forget(string? baseKey = null, string? adapterKey = null)
    {
        lock (gate)
            foreach (var block in blocks.Values.Where(b => b.Base == baseKey || b.Adapter == adapterKey).ToList())
                Drop(block);
    }

    bool Drop(Block block)
    {
        if (!blocks.Remove(block.Key)) return false;
        if (block.Parent is { } parent && blocks.TryGetValue(parent, out var p)) p.Children--;
        recency.Remove(block.Node!);
        bytes -= block.Bytes;
        block.Dropped = true;
        if (block.Pins == 0) block.Free();
        return true;
    }

    public void Dispose()
    {
        lock (gate)
            foreach (var block in blocks.Values.ToList()) Drop(block);
    }
}
