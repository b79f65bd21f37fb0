namespace AdapterService.Core.Inference;

/// <summary>
/// Fairness between projects, the engine's default admission policy: no project holds more than
/// <see cref="InferenceOptions.ProjectShare"/> of the engine's places (<see cref="InferenceOptions.MaxBatch"/> running rows
/// plus <see cref="InferenceOptions.MaxQueued"/> waiting, counted in choices) in flight, so a project that floods the
/// engine gets 429s while the others are still admitted; and while another project waits, a project already running its
/// fair part of the batch (the rows divided among the projects in flight) lets that one start first. Rollouts and eval
/// runs count against their project like API requests.
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

    public bool MayStart(AdmissionRequest request, AdmissionLoad load)
    {
        string project = request.Project ?? "";
        lock (gate)
        {
            // A project with nothing running may always start (so requests of many choices never wait on each other).
            int fair = Math.Max(1, load.MaxRows / Math.Max(1, projects.Count)), running = projects.GetValueOrDefault(project).Running;
            bool othersWait = projects.Any(p => p.Key != project && p.Value.InFlight > p.Value.Running);
            return !othersWait || running == 0 || running + request.Choices <= fair;
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
