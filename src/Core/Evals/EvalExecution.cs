using System.Text;
using System.Text.Json;
using AdapterService.Core.Grading;
using AdapterService.Core.Inference;

namespace AdapterService.Core.Evals;

/// <summary>A model's answer to one item's messages, or why there is none.</summary>
public sealed record EvalSample(string Output, string? FinishReason, int PromptTokens, int CompletionTokens, string? Error);

/// <summary>One criterion's grade of one sample (null with <see cref="Error"/> when grading failed).</summary>
public sealed record CriterionGrade(EvalCriterion Criterion, double? Score, bool Passed, string? Error);

/// <summary>One item scored for one model.</summary>
public sealed record EvalItemResult(int Index, JsonElement Item, IReadOnlyList<JudgeMessage> Input, EvalSample Sample, IReadOnlyList<CriterionGrade> Grades)
{
    public bool Errored => Sample.Error is not null || Grades.Any(g => g.Error is not null);
    public bool Passed => !Errored && Grades.All(g => g.Passed);
}

/// <summary>
/// Scores several models on the same items through the inference engine the API serves with. The items go in windows;
/// in each, every model's request for every item of the window is queued (<see cref="InferenceEngine.StartAsync"/>)
/// before any answer is read, so the models' requests are admitted together and decode in the engine's mixed batches
/// (one base, each row with its own adapter or none). A model's results do not depend on the others: each request has
/// its own sampler state (and seed), so a model scored in a group scores as it does alone.
/// </summary>
public static class EvalExecution
{
    /// <summary>Requests queued together at most (the engine's queue holds <see cref="InferenceOptions.MaxQueued"/>, 256 by default).</summary>
    public const int WindowRequests = 128;

    /// <summary>Scores each of <paramref name="modelNames"/> on <paramref name="items"/>; <paramref name="models"/> builds their requests and judges score_model graders.</summary>
    /// <param name="engine">The engine the requests are queued on.</param>
    /// <param name="models">Makes each model's request (its chat template applied); also the judge of score_model criteria.</param>
    /// <param name="modelNames">The models, one run each.</param>
    /// <param name="source">The input messages and sampling.</param>
    /// <param name="items">The items, checked already.</param>
    /// <param name="criteria">The testing criteria.</param>
    /// <param name="project">Whose requests they are (admission's shares).</param>
    /// <param name="afterWindow">Gets each model's results of a window (null for a model no longer active); returns which models go on (a run cancelled meanwhile stops).</param>
    /// <param name="cancel">Stops every request.</param>
    public static async Task RunAsync(InferenceEngine engine, EngineJudge models, IReadOnlyList<string> modelNames, EvalDataSource source,
        IReadOnlyList<JsonElement> items, IReadOnlyList<EvalCriterion> criteria, string? project,
        Func<IReadOnlyList<IReadOnlyList<EvalItemResult>?>, Task<IReadOnlyList<bool>>> afterWindow, CancellationToken cancel)
    {
        var active = Enumerable.Repeat(true, modelNames.Count).ToArray();
        int at = 0;
        while (at < items.Count && active.Any(a => a))
        {
            int size = Math.Max(1, WindowRequests / active.Count(a => a));
            var window = Enumerable.Range(at, Math.Min(size, items.Count - at)).ToList();
            at += window.Count;
            var inputs = window.Select(i => source.MessagesFor(items[i])).ToList();

            // Queue every request of the window first, then read them all.
            var streams = new List<(int Model, int Slot, Task<EvalSample> Answer)>();
            for (int m = 0; m < modelNames.Count; m++)
            {
                if (!active[m]) continue;
                for (int k = 0; k < window.Count; k++)
                {
                    IAsyncEnumerable<GenerationChunk>? stream = null;
                    string? error = null;
                    try
                    {
                        var request = await models.RequestAsync(modelNames[m], inputs[k], source.Sampling, RequestSource.Eval, cancel) with { Project = project };
                        stream = await StartAsync(engine, request, cancel);
                    }
                    catch (GraderException e) { error = e.Message; }
                    streams.Add((m, k, stream is null ? Task.FromResult(new EvalSample("", null, 0, 0, error)) : ReadAsync(stream, cancel)));
                }
            }
            var samples = await Task.WhenAll(streams.Select(s => s.Answer));

            var results = new List<EvalItemResult>?[modelNames.Count];
            var graded = streams.Select((s, i) => GradeAsync(window[s.Slot], items[window[s.Slot]], inputs[s.Slot], samples[i], criteria, models, cancel)).ToList();
            var done = await Task.WhenAll(graded);
            for (int i = 0; i < streams.Count; i++) (results[streams[i].Model] ??= []).Add(done[i]);
            var goOn = await afterWindow(results);
            for (int m = 0; m < active.Length; m++) active[m] &= goOn[m];
        }
    }

    /// <summary>Queues a request, waiting while the engine's queue is full (a full queue is back-pressure here, not an error).</summary>
    static async Task<IAsyncEnumerable<GenerationChunk>> StartAsync(InferenceEngine engine, GenerationRequest request, CancellationToken cancel)
    {
        while (true)
        {
            try { return await engine.StartAsync(request, cancel); }
            catch (EngineBusyException) { await Task.Delay(50, cancel); }
        }
    }

    static async Task<EvalSample> ReadAsync(IAsyncEnumerable<GenerationChunk> stream, CancellationToken cancel)
    {
        var text = new StringBuilder();
        GenerationChunk? last = null;
        await foreach (var chunk in stream.WithCancellation(cancel))
        {
            text.Append(chunk.Text);
            last = chunk;
        }
        return new EvalSample(text.ToString(), last?.FinishReason, last?.PromptTokens ?? 0, last?.CompletionTokens ?? 0, null);
    }

    static async Task<EvalItemResult> GradeAsync(int index, JsonElement item, IReadOnlyList<JudgeMessage> input, EvalSample sample,
        IReadOnlyList<EvalCriterion> criteria, IJudge judge, CancellationToken cancel)
    {
        var grades = new List<CriterionGrade>();
        foreach (var criterion in criteria)
        {
            if (sample.Error is not null) { grades.Add(new CriterionGrade(criterion, null, false, "no sample: " + sample.Error)); continue; }
            try
            {
                double grade = await criterion.Grader.GradeAsync(new GradingInput(item, sample.Output, judge), cancel);
                grades.Add(new CriterionGrade(criterion, grade, criterion.Passes(grade), null));
            }
            catch (GraderException e) { grades.Add(new CriterionGrade(criterion, null, false, e.Message)); }
        }
        return new EvalItemResult(index, item, input, sample, grades);
    }
}
