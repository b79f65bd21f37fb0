namespace AdapterService.Core.Inference;

/// <summary>
/// Fairness between projects, the engine's default admission policy: no project holds more than
/// <see cref="InferenceOptions.ProjectShare"/> of the engine's places (<see cref="InferenceOptions.MaxBatch"/> running rows
/// plus <see cref="InferenceOptions.MaxQueued"/> waiting, counted in choices) in flight, so a project that floods the
/// engine gets 429s while the others are still admitted. A project already running its fair part of the batch (the rows
/// divided among the projects in flight) starts no more while another project is active (<see cref="InferenceOptions.FairRows"/>;
/// off: while another waits), so the others decode in a batch near the size they would have alone; and when the batch is
/// full a project above its fair part gives its newest running requests back (<see cref="InferenceOptions.Preemption"/>:
/// the engine preempts them) until the waiting one fits (with fair rows, down to its fair part at once), never below it. A lone project keeps the whole
/// batch: no rows are reserved. Rollouts and eval runs count against their project like API requests.
/// </summary>
public sealed class ProjectShares(InferenceOptions options) : IAdmissionPolicy
{
    readonly Lock gate = new();
    /// <summary>Choices in flight (queued or running) and running, by project.</summary>
    readonly Dictionary<string, (int InFlight, int Running)> projects = [];
    readonly HashSet<AdmissionRequest> started = new(ReferenceEqualityComparer.Instance);

    /// <summary>The choices one project may have in flight.</summary>
    public int Limit => Math.Max(1, (int)(options.ProjectShare * (options.MaxBatch + options.MaxQueued)));

    public string? RefuseQueueing(AdmissionRequest request, int queued)
    {
        string project = request.Project ?? "";
        lock (gate)
        {
            var p = projects.GetValueOrDefault(project);
            if (p.InFlight + request.Choices > Limit)
                return $"The server is busy: this project has {p.InFlight} completion(s) in flight, its share of the server is {Limit}. Retry shortly.";
            projects[project] = p with { InFlight = p.InFlight + request.Choices };
            return null;
        }
    }

    /// <summary>A project's fair part of a batch's rows: the rows divided among the projects in flight.</summary>
    int Fair(AdmissionLoad load) => Math.Max(1, load.MaxRows / Math.Max(1, projects.Count));

    public bool MayStart(AdmissionRequest request, AdmissionLoad load)
    {
        string project = request.Project ?? "";
        lock (gate)
        {
            // A project with nothing running may always start (so requests of many choices never wait on each other).
            int running = projects.GetValueOrDefault(project).Running;
            bool others = projects.Any(p => p.Key != project && (options.FairRows || p.Value.InFlight > p.Value.Running));
            return !others || running == 0 || running + request.Choices <= Fair(load);
        }
    }

    public IReadOnlyList<AdmissionRequest> Preempt(AdmissionRequest request, AdmissionLoad load, IReadOnlyList<RunningRequest> running)
    {
        string project = request.Project ?? "";
        int needed = Admission.RowsShort(request, load);
        lock (gate)
        {
            int fair = Fair(load);
            // Rows are taken only for a project within its fair part, and only from projects above theirs, down to it. With
            // fair rows, all the way down at once: a project above its part may not start rows while another is active, so
            // the rows it holds beyond it would only slow the other's steps (on CPU a step's time grows with its rows).
            if (!options.Preemption || needed <= 0 || projects.GetValueOrDefault(project).Running + request.Choices > fair) return [];
            var held = running.GroupBy(r => r.Request.Project ?? "").ToDictionary(g => g.Key, g => g.Sum(r => r.Rows));
            var taken = new List<AdmissionRequest>();
            for (int i = running.Count - 1; i >= 0 && (needed > 0 || options.FairRows); i--)   // the newest first: the least work lost
            {
                var (victim, rows) = running[i];
                string owner = victim.Project ?? "";
                if (owner == project || held[owner] - rows < fair) continue;
                held[owner] -= rows;
                needed -= rows;
                taken.Add(victim);
            }
            return needed > 0 ? [] : taken;
        }
    }

    public void Preempted(AdmissionRequest request)
    {
        lock (gate)
        {
            if (!started.Remove(request)) return;
            var p = projects.GetValueOrDefault(request.Project ?? "");
            projects[request.Project ?? ""] = p with { Running = p.Running - request.Choices };
        }
    }

    public void Started(AdmissionRequest request)
    {
        lock (gate)
        {
            started.Add(request);
            var p = projects.GetValueOrDefault(request.Project ?? "");
            projects[request.Project ?? ""] = p with { Running = p.Running + request.Choices };
        }
    }

    public void Ended(AdmissionRequest request)
    {
        string project = request.Project ?? "";
        lock (gate)
        {
            var p = projects.GetValueOrDefault(project);
            p = (p.InFlight - request.Choices, started.Remove(request) ? p.Running - request.Choices : p.Running);
            if (p.InFlight <= 0) projects.Remove(project);
            else projects[project] = p;
        }
    }
}
