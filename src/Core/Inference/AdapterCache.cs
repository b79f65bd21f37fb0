using AdapterService.Core.Adapters;

namespace AdapterService.Core.Inference;

/// <summary>
/// Adapter weights in memory, loaded on demand and kept within a byte budget: when a load goes over it, the least
/// recently used adapters no request is using are dropped (and reload transparently when asked for again).
/// Loads run on the caller's thread pool thread, never on the inference thread, so a load never stalls the running batch.
/// </summary>
public sealed class AdapterCache(long budgetBytes)
{
    public sealed class Entry
    {
        public required string Key { get; init; }
        public required ServedAdapter Adapter { get; init; }
        public long Bytes { get; init; }
        internal int Users;
        internal bool Dropped;
        internal LinkedListNode<Entry>? Node;
    }

    /// <summary>Holds an entry in memory until disposed.</summary>
    public sealed class Lease(AdapterCache cache, Entry entry) : IDisposable
    {
        int released;
        public Entry Entry { get; } = entry;
        public void Dispose() { if (Interlocked.Exchange(ref released, 1) == 0) cache.Release(Entry); }
    }

    readonly Lock gate = new();
    readonly Dictionary<string, Entry> entries = [];
    readonly Dictionary<string, Task<Entry>> loading = [];
    readonly Dictionary<string, int> waiters = [];
    readonly LinkedList<Entry> recency = [];   // most recently used first
    long bytes;

    public long Hits { get; private set; }
    public long Misses { get; private set; }
    public long Bytes { get { lock (gate) return bytes; } }
    public int Count { get { lock (gate) return entries.Count; } }

    /// <summary>The adapter's weights, loaded with <paramref name="load"/> if they are not in memory.</summary>
    public async Task<Lease> AcquireAsync(string key, Func<ServedAdapter> load)
    {
        Task<Entry> pending;
        lock (gate)
        {
            if (entries.TryGetValue(key, out var cached))
            {
                Hits++;
                cached.Users++;
                recency.Remove(cached.Node!);
                recency.AddFirst(cached.Node!);
                return new Lease(this, cached);
            }
            if (!loading.TryGetValue(key, out pending!))
            {
                Misses++;
                waiters[key] = 0;
                loading[key] = pending = Task.Run(() => Load(key, load));
            }
            waiters[key]++;   // counted as a user the moment the load lands, so no trim can free it before we get it
        }
        return new Lease(this, await pending);
    }

    Entry Load(string key, Func<ServedAdapter> load)
    {
        ServedAdapter adapter;
        try
        {
            adapter = load();
        }
        catch
        {
            lock (gate) { loading.Remove(key); waiters.Remove(key); }
            throw;
        }
        var entry = new Entry { Key = key, Adapter = adapter, Bytes = adapter.Bytes };
        lock (gate)
        {
            entry.Users = waiters[key];
            waiters.Remove(key);
            loading.Remove(key);
            entries[key] = entry;
            entry.Node = recency.AddFirst(entry);
            bytes += entry.Bytes;
            Trim();
        }
        return entry;
    }

    /// <summary>Drops an adapter (deleted): it is freed as soon as no running request uses it.</summary>
    public void Evict(string key)
    {
        lock (gate)
            if (entries.TryGetValue(key, out var entry)) Drop(entry);
    }

    void Release(Entry entry)
    {
        lock (gate)
        {
            entry.Users--;
            if (entry.Dropped && entry.Users == 0) Free(entry);
            else Trim();
        }
    }

    /// <summary>Drops least recently used, unused entries while over budget.</summary>
    void Trim()
    {
        for (var node = recency.Last; node is not null && bytes > budgetBytes;)
        {
            var previous = node.Previous;
            if (node.Value.Users == 0) Drop(node.Value);
            node = previous;
        }
    }

    void Drop(Entry entry)
    {
        entries.Remove(entry.Key);
        recency.Remove(entry.Node!);
        bytes -= entry.Bytes;
        entry.Dropped = true;
        if (entry.Users == 0) Free(entry);
    }

    static void Free(Entry entry) => entry.Adapter.Dispose();
}
