using AdapterService.Core.Adapters;
using static TorchSharp.torch;

namespace AdapterService.Core.Inference;

/// <summary>
/// The engine's step and its prefill: which prompt chunks a step carries (chunked prefill, Sarathi-Serve, "Taming
/// Throughput-Latency Tradeoff in LLM Inference with Sarathi-Serve", https://arxiv.org/abs/2403.02310), and the forward
/// pass that writes them into the cache.
/// </summary>
public sealed partial class InferenceEngine
{
    /// <summary>Positions [Offset, Offset + Length) of a request's prompt, one row of a prefill forward.</summary>
    readonly record struct Chunk(Sequence Sequence, long Offset, long Length);

    /// <summary>
    /// One engine step of a base model. Chunked: a decode token for every running row, then up to
    /// <see cref="InferenceOptions.StepTokens"/> of prompt chunks (decode rows counted) in a second forward: two forwards
    /// per step, so a long prompt delays the running streams by one chunk's time, not its whole prefill. Not chunked
    /// (the earlier scheduler): every waiting prompt that has a row place is prefilled whole, then one decode step.
    /// </summary>
    void RunStep(Batch batch)
    {
        if (!options.ChunkedPrefill)
        {
            while (Plan(batch) is { Count: > 0 } whole) Prefill(batch, whole);
            if (batch.Rows.Count > 0) DecodeStep(batch);
            return;
        }
        var chunks = Plan(batch);
        if (batch.Rows.Count > 0) DecodeStep(batch);
        if (chunks.Count > 0) Prefill(batch, chunks);
    }

    /// <summary>
    /// The prompt chunks of the next prefill forward, padded tokens within <see cref="Admission.PrefillBudget"/>: prompts
    /// being prefilled first, then waiting requests in arrival order as admission lets them start; the first that does
    /// not fit (row places for its n, a prefill slot, the budget) ends the walk, so a large request is never overtaken for
    /// good; one the policy defers is passed over. A model whose rotation reads the call's length
    /// (<see cref="Models.CausalLanguageModel.PositionsDependOnLength"/>) gets whole prompts.
    /// </summary>
    List<Chunk> Plan(Batch batch)
    {
        var chunks = new List<Chunk>();
        bool split = options.ChunkedPrefill && !batch.Model.PositionsDependOnLength;
        long budget = Admission.PrefillBudget(batch.Rows.Count), longest = 0;
        bool Add(Sequence s)
        {
            long room = Admission.Room(budget, chunks.Count, longest), rest = s.Input.Count - s.Length, length = split ? Math.Min(rest, room) : rest;
            if (length <= 0 || (chunks.Count > 0 && length > room)) return false;
            chunks.Add(new Chunk(s, s.Length, length));
            longest = Math.Max(longest, length);
            return true;
        }

        foreach (var s in batch.Prefilling.ToList())
        {
            if (s.Abandoned) Abandon(batch, s);
            else if (!Add(s)) break;
        }
        if (chunks.Count < batch.Prefilling.Count) return chunks;   // the earlier prompts come first
        for (int w = 0; w < batch.Waiting.Count;)
        {
            var next = batch.Waiting[w];
            if (next.Abandoned)
            {
                batch.Waiting.RemoveAt(w);
                FinishAll(next, new OperationCanceledException(next.Cancel));
                continue;
            }
            var hit = CachedPrefix(batch, next);
            long cached = hit.Count * (long)(Prefixes?.BlockTokens ?? 0);
            var request = next.Siblings.Admitted with { CachedTokens = (int)cached };
            AdmissionLoad Load() => new(batch.Rows.Count, batch.Reserved, batch.MaxRows, batch.Prefilling.Count, batch.Waiting.Count);
            var load = Load();
            if (!Admission.MayStart(request, load))
            {
                Prefixes?.Unpin(hit);
                w++;
                continue;
            }
            bool slotFree = batch.FreeStaging.Count > 0 || !options.ChunkedPrefill;
            bool fits = Admission.Fits(request, load, slotFree);
            if (!fits && slotFree && Admission.RowsShort(request, load) > 0 && PreemptFor(batch, request, load))
            {
                fits = Admission.Fits(request, Load(), slotFree);
                w = batch.Waiting.IndexOf(next);   // the preempted requests went in front of it
            }
            if (!fits)
            {
                Prefixes?.Unpin(hit);
                break;
            }
            next.Length = cached;   // its chunk starts after the cached blocks
            if (!Add(next))
            {
                next.Length = 0;
                Prefixes?.Unpin(hit);
                break;
            }
            batch.Waiting.RemoveAt(w);
            (next.Siblings.Admitted, next.Siblings.Started, next.Siblings.StartOrder) = (request, true, ++starts);
            Admission.Started(request);
            next.Slot = PrefillSlot(batch);
            Restore(batch, next, hit);
            batch.Prefilling.Add(next);
        }
        return chunks;
    }

    /// <summary>
    /// Asks the policy which running requests give their rows to <paramref name="request"/> and preempts them: true when
    /// any was. Only requests whose every unfinished choice is running can be preempted, and none of a model whose
    /// rotation reads the call's length (its rows, prefilled again whole, would not be what they were).
    /// </summary>
    bool PreemptFor(Batch batch, AdmissionRequest request, AdmissionLoad load)
    {
        if (batch.Model.PositionsDependOnLength) return false;
        var requests = batch.Rows.Select(r => r.Siblings).Distinct().Where(c => c.Joining == 0 && !c.Failed).OrderBy(c => c.StartOrder).ToList();
        var running = requests.Select(c => new RunningRequest(c.Admitted, batch.Rows.Count(r => r.Siblings == c))).ToList();
        var byRequest = requests.ToDictionary<Choices, AdmissionRequest>(c => c.Admitted, ReferenceEqualityComparer.Instance);
        var victims = Admission.Preempt(request, load, running).Select(v => byRequest.GetValueOrDefault(v)).OfType<Choices>().Distinct().ToList();
        foreach (var victim in victims.OrderByDescending(c => c.StartOrder))   // the oldest ends up first in the queue
            Preempt(batch, victim);
        return victims.Count > 0;
    }

    /// <summary>
    /// Takes a running request's rows away (recompute-style, as vLLM's preemption): each unfinished choice keeps what it
    /// generated, its sampler, logits state and pending logprobs, and will be prefilled again over its prompt and every
    /// generated token but the last (the prefix cache may hold part of it), then decode on from its last token: nothing is
    /// streamed twice. The request goes back to the front of the queue.
    /// </summary>
    void Preempt(Batch batch, Choices request)
    {
        for (int i = batch.Rows.Count - 1; i >= 0; i--)
        {
            var s = batch.Rows[i];
            if (s.Siblings != request) continue;
            s.Input = [.. s.Request.Prompt, .. s.Generated.Take(s.Generated.Count - 1)];
            if (s.Input.Count != s.Length) throw new InvalidOperationException($"A preempted row holds {s.Length} positions, not {s.Input.Count}.");
            (s.Length, s.Slot, s.BlockKeys, s.Resuming) = (0, -1, null, true);
            Remove(batch, i);
        }
        request.Joining = request.All.Count(c => c.Resuming && !c.Finished);
        request.Started = false;
        batch.Waiting.Insert(0, request.All.First(c => c.Resuming && !c.Finished));
        Interlocked.Increment(ref preemptions);
        Admission.Preempted(request.Admitted);
    }

    /// <summary>The next preempted choice of a request, one of whose choices just rejoined the rows, takes a slot to be prefilled again.</summary>
    void ResumeNext(Batch batch, Choices request)
    {
        if (request.All.FirstOrDefault(c => c.Resuming && !c.Finished) is not { } next) return;
        var hit = CachedPrefix(batch, next);
        next.Length = hit.Count * (long)(Prefixes?.BlockTokens ?? 0);
        next.Slot = PrefillSlot(batch);
        Restore(batch, next, hit);
        batch.Prefilling.Insert(0, next);
    }

    /// <summary>
    /// The cache slot a starting prompt is prefilled into: chunked, a free staging slot; unchunked, the first slot after
    /// the running rows that no other prompt holds (prompts finish in their forward and join the rows in slot order, so
    /// each moves down into a slot no later prompt holds, even after a preemption lowered the rows).
    /// </summary>
    int PrefillSlot(Batch batch)
    {
        if (options.ChunkedPrefill) return batch.FreeStaging.Pop();
        int slot = batch.Rows.Count;
        while (batch.Prefilling.Any(p => p.Slot == slot)) slot++;
        return slot;
    }

    /// <summary>
    /// The cached blocks of a waiting request's prompt (pinned; none when the cache is off or the model's rotation reads
    /// the call's length), its blocks' keys noted for storing what it computes. Scoped by project (unless shared across
    /// projects), base version and adapter content.
    /// </summary>
    List<PrefixCache.Block> CachedPrefix(Batch batch, Sequence s)
    {
        if (Prefixes is null || batch.Model.PositionsDependOnLength) return [];
        var request = s.Request;
        s.BlockKeys ??= Prefixes.Keys(options.PrefixCacheAcrossProjects ? "" : request.Project ?? "", batch.BaseKey,
            s.Adapter?.Entry.Adapter.ContentKey ?? "", s.Input);
        return Prefixes.Match(s.BlockKeys, (s.Input.Count - 1) / Prefixes.BlockTokens);   // its last token is always computed
    }

    /// <summary>A new sequence's slot: the cached blocks' keys and values and the adapter state after the last of them (zero state without).</summary>
    void Restore(Batch batch, Sequence s, List<PrefixCache.Block> hit)
    {
        using (NewDisposeScope())
        {
            foreach (var state in batch.States.Values) state[s.Slot].zero_();
            for (int b = 0; b < hit.Count; b++) batch.Cache.Write(s.Slot, b * (long)Prefixes!.BlockTokens, hit[b].Keys, hit[b].Values);
            if (hit.Count > 0)
                foreach (var ((path, width), value) in hit[^1].States) batch.State(path, width)[s.Slot].copy_(value);
        }
        if (hit.Count == 0) return;
        Prefixes!.Unpin(hit);
        if (s.Resuming) return;   // usage reports the prompt's cached tokens once, as the request first started
        s.Siblings.Cached = (int)s.Length;
        Interlocked.Add(ref cachedPromptTokens, s.Length);
    }

    /// <summary>For each chunk, the prompt blocks it completes that the prefix cache lacks.</summary>
    List<List<int>> NewBlocks(List<Chunk> chunks) => chunks.Select(c =>
    {
        if (Prefixes is null || c.Sequence.BlockKeys is not { } keys) return new List<int>();
        int size = Prefixes.BlockTokens;
        return Enumerable.Range((int)(c.Offset / size), (int)((c.Offset + c.Length) / size - c.Offset / size))
            .Where(b => b < keys.Length && !Prefixes.Contains(keys[b])).ToList();
    }).ToList();

    /// <summary>
    /// Puts the blocks a prefill forward completed into the prefix cache: keys and values copied out of the slot, and the
    /// adapter's state after each block's last token (which <paramref name="marks"/> kept during the forward).
    /// </summary>
    void Store(Batch batch, List<Chunk> chunks, List<List<int>> blocks, StateMarks? marks)
    {
        int size = Prefixes!.BlockTokens;
        for (int r = 0; r < chunks.Count; r++)
        {
            var s = chunks[r].Sequence;
            var adapter = s.Adapter?.Entry.Adapter;
            var stateful = adapter?.Deltas.Where(d => d.Value.StateWidth > 0).Select(d => (d.Key, d.Value.StateWidth)).ToHashSet() ?? [];
            for (int j = 0; j < blocks[r].Count; j++)
            {
                int b = blocks[r][j];
                var (keys, values) = batch.Cache.Read(s.Slot, b * (long)size, size);
                var states = (marks?.Kept ?? []).Where(k => stateful.Contains(k.Key)).ToDictionary(k => k.Key, k => k.Value[r, j].clone());
                var tensors = keys.Concat(values).Concat(states.Values).ToList();
                foreach (var t in tensors) t.DetachFromDisposeScope();
                Prefixes.Add(new PrefixCache.Block
                {
                    Key = s.BlockKeys![b], Parent = b > 0 ? s.BlockKeys[b - 1] : null, Base = batch.BaseKey, Adapter = adapter?.ContentKey ?? "",
                    Keys = keys, Values = values, States = states, Bytes = tensors.Sum(t => t.numel() * t.element_size()),
                });
            }
        }
    }

    /// <summary>A prompt being prefilled whose client went away (or whose sibling failed).</summary>
    void Abandon(Batch batch, Sequence s)
    {
        Release(batch, s);
        FinishAll(s, new OperationCanceledException(s.Cancel));
    }

    /// <summary>Takes a prompt out of the prefilling ones, its prefill slot free again.</summary>
    void Release(Batch batch, Sequence s)
    {
        batch.Prefilling.Remove(s);
        if (s.Slot >= batch.MaxRows) batch.FreeStaging.Push(s.Slot);
        s.Slot = -1;
    }

    /// <summary>
    /// One forward pass over prompt chunks (right-padded rows, each with its own adapter and its own cache slot, positions
    /// after what the slot holds; Lily's router sums carried in the slot's state). A prompt whose last chunk this is joins
    /// the running rows (its n choices copying its keys, values and state) with its first token sampled here.
    /// </summary>
    void Prefill(Batch batch, List<Chunk> chunks)
    {
        int first = batch.Rows.Count;
        try
        {
            using var scope = NewDisposeScope();
            TrainableAdapter.Detach(batch.Model);   // the running rows' adapters stay kept for the next decode step
            var device = batch.Cache.Device;
            var sequences = chunks.Select(c => c.Sequence).ToList();
            long width = chunks.Max(c => c.Length);
            var lengths = tensor(chunks.Select(c => c.Length).ToArray(), device: device).unsqueeze(1);         // [n, 1]
            var offsets = tensor(chunks.Select(c => c.Offset).ToArray(), device: device).unsqueeze(1);         // [n, 1]
            var steps = arange(width, ScalarType.Int64, device).unsqueeze(0);                                    // [1, width]
            var valid = steps.lt(lengths);                                                                      // [n, width]
            // Blocks this forward completes for the prefix cache, and where in each row their last tokens are (−1: none).
            var blocks = NewBlocks(chunks);
            int most = blocks.Max(b => b.Count);
            var marks = most == 0 ? null : new StateMarks(tensor(chunks.SelectMany((c, r) => blocks[r]
                .Select(b => (b + 1L) * Prefixes!.BlockTokens - 1 - c.Offset).Concat(Enumerable.Repeat(-1L, most - blocks[r].Count))).ToArray(), [chunks.Count, most], device: device));
            using var rowAdapters = SetAdapters(batch, sequences, sequences.Select(s => (long)s.Slot).ToList(), valid, marks);
            batch.Cache.BeginChunks(chunks.Select(c => ((long)c.Sequence.Slot, c.Offset, c.Length)).ToArray());
            var ids = tensor(chunks.SelectMany(c => c.Sequence.Input.Skip((int)c.Offset).Take((int)c.Length).Select(t => (long)t)
                .Concat(Enumerable.Repeat(0L, (int)(width - c.Length)))).ToArray(), [chunks.Count, width], device: device);   // [n, width]
            // A row's padding repeats its last position, so each row's largest position is its own (dynamic and LongRoPE
            // scale by it, per row); the padding's keys are never written and its outputs unread.
            var positions = offsets + steps.minimum(lengths - 1);                                               // [n, width]
            // Causal over the slot's cached positions and the chunk's own; no key past the row's chunk.
            long visible = chunks.Max(c => c.Offset + c.Length);
            var keys = arange(visible, ScalarType.Int64, device).view(1, 1, visible);                          // [1, 1, visible]
            var mask = keys.le((offsets + steps).unsqueeze(2)).logical_and(keys.lt((offsets + lengths).unsqueeze(2))).unsqueeze(1);   // [n, 1, width, visible]
            var logits = batch.Model.Forward(ids, positions, mask, batch.Cache);                                // [n, width, vocab]
            Interlocked.Increment(ref prefillForwards);
            if (most > 0) Store(batch, chunks, blocks, marks);
            TrainableAdapter.Detach(batch.Model);   // this call's row adapters are freed with it
            foreach (var c in chunks) c.Sequence.Length += c.Length;

            // Prompts whose last chunk ran join the rows; a fresh one samples its first token here, a resumed one does not
            // (its next input is the token it had).
            var sample = new List<(int Row, int Chunk, long Last)>();
            var resumed = new List<Choices>();
            foreach (int i in Enumerable.Range(0, chunks.Count).OrderBy(i => chunks[i].Sequence.Slot))   // slot order: see PrefillSlot
            {
                var s = chunks[i].Sequence;
                if (s.Length < s.Input.Count) continue;
                int slot = s.Slot, row = batch.Rows.Count;
                Release(batch, s);
                if (slot != row) MoveSlot(batch, slot, row, s.Length);
                batch.Rows.Add(s);
                Interlocked.Increment(ref running);
                s.Siblings.Joining--;
                if (!s.Resuming) sample.Add((row, i, chunks[i].Length - 1));
                else if (!resumed.Contains(s.Siblings)) resumed.Add(s.Siblings);
                s.Resuming = false;
            }
            foreach (var (row, chunk, last) in sample.ToList())   // the other choices: the prompt's keys, values and adapter state copied
                foreach (var choice in batch.Rows[row].Siblings.All.Skip(1))
                {
                    MoveSlot(batch, row, batch.Rows.Count, batch.Rows[row].Length);
                    choice.Length = batch.Rows[row].Length;
                    batch.Rows.Add(choice);
                    Interlocked.Increment(ref running);
                    choice.Siblings.Joining--;
                    sample.Add((batch.Rows.Count - 1, chunk, last));
                }
            if (batch.Rows.Count > first) batch.ClearAdapters();   // the decode step gathers the new row set
            foreach (var (row, chunk, last) in sample.OrderByDescending(x => x.Row))   // from the last: a finished row is replaced by the batch's last row
            {
                var s = batch.Rows[row];
                try
                {
                    if (s.Abandoned) Finish(s, new OperationCanceledException(s.Cancel));
                    else if (!Step(batch, s, logits[chunk, last])) continue;
                }
                catch (Exception e)
                {
                    Finish(s, e);   // one row's failure (its sampling, say) is not its batchmates'
                }
                Remove(batch, row);
            }
            foreach (var request in resumed) ResumeNext(batch, request);
        }
        catch (Exception e)
        {
            while (batch.Rows.Count > first) Remove(batch, batch.Rows.Count - 1);
            TrainableAdapter.Detach(batch.Model);   // the call's own row adapters are disposed; no layer may keep pointing at them
            foreach (var c in chunks)
            {
                Release(batch, c.Sequence);
                FinishAll(c.Sequence, e);
            }
        }
    }

    /// <summary>Copies a slot's first <paramref name="length"/> positions and its adapter state into another slot.</summary>
    static void MoveSlot(Batch batch, int from, int to, long length)
    {
        batch.Cache.Move(from, to, length);
        foreach (var state in batch.States.Values) state[to].copy_(state[from]);
    }
}
