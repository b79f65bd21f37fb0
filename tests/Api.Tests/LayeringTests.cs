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
                    if (method.Body.Instructions.Any(i => i.Operand is MethodReference { Name: "set_Status" } r && r.DeclaringType.Name == nameof(FineTuningJob)))
                        setters.Add(TypeReferences.Outermost(type).FullName);
        }
        Assert.Equal([typeof(JobLifecycle).FullName!], setters);
    }
}
