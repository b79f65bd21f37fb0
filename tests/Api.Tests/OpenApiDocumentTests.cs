using System.Diagnostics;
using System.Reflection;
using System.Runtime.Loader;
using System.Text.Json.Nodes;
using Microsoft.CodeAnalysis;
using Microsoft.CodeAnalysis.CSharp;
using NSwag.CodeGeneration.CSharp;
using NSwag.CodeGeneration.OperationNameGenerators;

namespace AdapterService.Api.Tests;

/// <summary>
/// The served OpenAPI document is one others can build on: Redocly's linter (tests/openapi-lint, installed by
/// scripts/test.sh) passes it on its recommended rules, and a C# client that NSwag generates from it compiles and calls
/// the service.
/// </summary>
[Collection(ServiceCollection.Name)]
public sealed class OpenApiDocumentTests(ServiceFactory factory)
{
    static readonly string LintDir = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "openapi-lint"));

    [Fact]
    public async Task TheDocumentPassesRedoclysRecommendedRules()
    {
        var redocly = Path.Combine(LintDir, "node_modules", "@redocly", "cli", "bin", "cli.js");
        Assert.True(File.Exists(redocly), $"@redocly/cli is missing from {LintDir}; scripts/test.sh installs it (npm ci)");
        // Served to a client that reached the service as 127.0.0.1:5080: the document's server is where it came from.
        using var request = new HttpRequestMessage(HttpMethod.Get, "/swagger/v1/swagger.json") { Headers = { Host = "127.0.0.1:5080" } };
        using var response = await factory.CreateClient().SendAsync(request);
        var json = await response.EnsureSuccessStatusCode().Content.ReadAsStringAsync();
        var document = JsonNode.Parse(json)!;

        // What generators need, checked here too so that a failure names the operation.
        var ids = new List<string>();
        foreach (var (path, item) in document["paths"]!.AsObject())
            foreach (var (method, operation) in item!.AsObject())
            {
                var id = operation!["operationId"]?.GetValue<string>();
                Assert.False(string.IsNullOrEmpty(id), $"{method} {path} has no operationId");
                ids.Add(id);
            }
        Assert.Equal(ids.Count, ids.Distinct().Count());
        Assert.Contains("createChatCompletion", ids);
        Assert.Contains("listPaginatedFineTuningJobs", ids);
        Assert.Equal("http://127.0.0.1:5080", document["servers"]![0]!["url"]!.GetValue<string>());
        foreach (var tag in document["tags"]!.AsArray()) Assert.False(string.IsNullOrEmpty(tag!["description"]?.GetValue<string>()), $"tag {tag["name"]}");

        // The linter runs in a folder of its own with the document and the accepted exceptions (.redocly.lint-ignore.yaml).
        using var folder = new TempFolder("adapter-service-openapi-");
        await File.WriteAllTextAsync(Path.Combine(folder.FullName, "openapi.json"), json);
        File.Copy(Path.Combine(LintDir, ".redocly.lint-ignore.yaml"), Path.Combine(folder.FullName, ".redocly.lint-ignore.yaml"));
        var start = new ProcessStartInfo("node", [redocly, "lint", "openapi.json", "--format=json"])
        {
            WorkingDirectory = folder.FullName, RedirectStandardOutput = true, RedirectStandardError = true,
            Environment = { ["REDOCLY_TELEMETRY"] = "off", ["REDOCLY_SUPPRESS_UPDATE_NOTICE"] = "true" },
        };
        using var process = Process.Start(start)!;
        var output = process.StandardOutput.ReadToEndAsync();
        var errors = process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync().WaitAsync(TimeSpan.FromMinutes(2));
        var report = JsonNode.Parse(await output)!;
        var problems = string.Join("\n", report["problems"]!.AsArray().Select(p =>
            $"{p!["severity"]} {p["ruleId"]} {p["location"]![0]!["pointer"]}: {p["message"]}"));
        Assert.True(report["totals"]!["errors"]!.GetValue<int>() == 0 && report["totals"]!["warnings"]!.GetValue<int>() == 0,
            $"redocly lint:\n{problems}\n{await errors}");
        Assert.Equal(0, process.ExitCode);
        Assert.Equal(3, report["totals"]!["ignored"]!.GetValue<int>());   // exactly the exceptions of .redocly.lint-ignore.yaml
    }

    [Fact]
    public async Task ACSharpClientGeneratedFromTheDocumentCompilesAndCallsTheService()
    {
        var http = factory.CreateClient();
        var document = await NSwag.OpenApiDocument.FromJsonAsync(await http.GetStringAsync("/swagger/v1/swagger.json"));
        var settings = new CSharpClientGeneratorSettings
        {
            ClassName = "AdapterServiceClient",
            OperationNameGenerator = new SingleClientFromOperationIdOperationNameGenerator(),
            UseBaseUrl = false,   // HttpClient.BaseAddress
            CSharpGeneratorSettings = { Namespace = "Generated", JsonLibrary = NJsonSchema.CodeGeneration.CSharp.CSharpJsonLibrary.SystemTextJson },
        };
        var code = new CSharpClientGenerator(document, settings).GenerateFile();

        // Roslyn compiles it in memory against the test's own runtime assemblies.
        var references = ((string)AppContext.GetData("TRUSTED_PLATFORM_ASSEMBLIES")!).Split(Path.PathSeparator)
            .Select(path => MetadataReference.CreateFromFile(path));
        var compilation = CSharpCompilation.Create("GeneratedClient", [CSharpSyntaxTree.ParseText(code, new CSharpParseOptions(LanguageVersion.Latest))],
            references, new CSharpCompilationOptions(OutputKind.DynamicallyLinkedLibrary, nullableContextOptions: NullableContextOptions.Enable));
        using var image = new MemoryStream();
        var emitted = compilation.Emit(image);
        Assert.True(emitted.Success, string.Join("\n", emitted.Diagnostics.Where(d => d.Severity == DiagnosticSeverity.Error).Take(20)));

        // The generated client retrieves a model: its typed answer holds what the service sent.
        image.Position = 0;
        var assembly = new AssemblyLoadContext("generated-client", isCollectible: true).LoadFromStream(image);
        var clientType = assembly.GetType("Generated.AdapterServiceClient")!;
        var client = Activator.CreateInstance(clientType, http)!;
        var call = (Task)clientType.GetMethod("RetrieveModelAsync", [typeof(string)])!.Invoke(client, ["tiny-llama-demo"])!;
        await call;
        var model = call.GetType().GetProperty("Result")!.GetValue(call)!;
        Assert.Equal("tiny-llama-demo", model.GetType().GetProperty("Id")!.GetValue(model));
        Assert.Equal("model", model.GetType().GetProperty("Object")!.GetValue(model));

        // An error comes back as the generated ApiException with the status code.
        var missing = (Task)clientType.GetMethod("RetrieveModelAsync", [typeof(string)])!.Invoke(client, ["no-such-model"])!;
        var error = await Assert.ThrowsAnyAsync<Exception>(() => missing);
        Assert.StartsWith("Generated.ApiException", error.GetType().FullName);
        Assert.Equal(404, error.GetType().GetProperty("StatusCode")!.GetValue(error));
    }
}
