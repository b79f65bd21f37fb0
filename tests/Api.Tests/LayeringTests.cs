using AdapterService.Core.Jobs;
using AdapterService.Core.Storage;
using AdapterService.Tests.Shared;
using Mono.Cecil;

namespace AdapterService.Api.Tests;

/// <summary>
/// Pins the seams between the assemblies, read from the compiled code: the API reaches training only through Core's
/// job lifecycle and queue (never a runner type), and a job's status is set in one place, Core's <see cref="JobLifecycle"/>.
/// </summary>
public class LayeringTests
{
    static readonly string[] Assemblies =
        [typeof(Program).Assembly.Location, typeof(Workers.WorkerServices).Assembly.Location, typeof(JobLifecycle).Assembly.Location];

    [Fact]
    public void The_api_uses_nothing_of_the_workers_but_their_registration()
    {
        using var api = AssemblyDefinition.ReadAssembly(typeof(Program).Assembly.Location);
        var used = api.MainModule.GetTypes().SelectMany(TypeReferences.Of).Select(t => TypeReferences.Outermost(t))
            .Where(t => t.Namespace == "AdapterService.Workers").Select(t => t.Name).ToHashSet();
        Assert.Equal(["WorkerServices"], used.Order());
    }

    [Fact]
    public void Only_the_job_lifecycle_sets_a_job_status()
    {
        var setters = new SortedSet<string>();
        foreach (var path in Assemblies)
        {
            using var assembly = AssemblyDefinition.ReadAssembly(path);
            foreach (var type in assembly.MainModule.GetTypes())
                foreach (var method in type.Methods.Where(m => m.HasBody))
                    if (SetsStatus(method)) setters.Add(TypeReferences.Outermost(type).FullName);
        }
        Assert.Equal([typeof(JobLifecycle).FullName!], setters);
    }

    /// <summary>
    /// A job's <c>Status</c> property set (<c>job.Status = …</c>), or named as the property of an EF Core
    /// <c>ExecuteUpdate</c> setter: <c>SetProperty(j =&gt; j.Status, …)</c> builds its selector from the getter's token
    /// right before the <c>SetProperty</c> it is passed to.
    /// </summary>
    static bool SetsStatus(MethodDefinition method)
    {
        string? lastJobGetter = null;
        foreach (var instruction in method.Body.Instructions)
        {
            if (instruction.Operand is not MethodReference r) continue;
            if (r.DeclaringType.Name == nameof(FineTuningJob))
            {
                if (r.Name == "set_Status") return true;
                if (r.Name.StartsWith("get_", StringComparison.Ordinal)) lastJobGetter = r.Name;
            }
            else if (r.Name == "SetProperty")
            {
                if (lastJobGetter == "get_Status") return true;
                lastJobGetter = null;
            }
        }
        return false;
    }
}
