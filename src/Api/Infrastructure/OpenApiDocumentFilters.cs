using Microsoft.AspNetCore.Authorization;
using Microsoft.AspNetCore.Http.Metadata;
using Microsoft.OpenApi;
using Swashbuckle.AspNetCore.SwaggerGen;

namespace AdapterService.Api.Infrastructure;

/// <summary>
/// What makes the served OpenAPI document one that client generators and linters take as it is: described tags, a
/// <c>servers</c> entry, and the errors every protected route can answer. Operation ids come from each endpoint's
/// <c>WithName</c> (OpenAI's ids where OpenAI has the operation).
/// </summary>
public static class OpenApiDocumentFilters
{
    /// <summary>Each tag of the Apis/*Api.cs groups, described once here.</summary>
    static readonly Dictionary<string, string> TagDescriptions = new()
    {
        ["Files"] = "Upload training and validation files (JSONL, or image folders as zip); OpenAI's files API.",
        ["Fine-tuning"] = "Fine-tuning jobs, their events and checkpoints; OpenAI's fine-tuning API plus the `adapter` extension.",
        ["Evals"] = "OpenAI's Evals API: evals (item schema and testing criteria) and their runs over models, scored through the serving engine; `data_source.models` runs several models in one call.",
        ["Completions"] = "Text completions (OpenAI's legacy completions) and our batch of completions with per-row adapters.",
        ["Chat"] = "Chat completions with a base model, a fine-tuned model or a checkpoint, streamed or whole.",
        ["Models"] = "Base and fine-tuned models as OpenAI lists them; export as a Hugging Face folder or GGUF.",
        ["Base models"] = "Our extension: the base models adapters are trained on, built in or registered by an admin.",
        ["Adapters"] = "Our extension: stored adapters, their PEFT export and import, and weighted combinations.",
        ["Classification"] = "Our extension: image classification with ViT bases and their fine-tuned adapters.",
        ["Tokenizer"] = "vLLM's /tokenize and /detokenize.",
        ["Admin"] = "Projects and their API keys; the admin key only.",
        ["Projects"] = "A project's storage usage against its quotas; a project key sees its own project.",
        ["Webhooks"] = "A project's webhook endpoints and their delivery logs; events in OpenAI's format, signed as Standard Webhooks.",
        ["Operations"] = "Liveness, readiness and Prometheus metrics for whoever runs the service; no key needed.",
    };

    public static void AddDocumentFilters(this SwaggerGenOptions options)
    {
        options.DocumentFilter<DescribeTags>();
        options.OperationFilter<ProtectedRouteErrors>();
    }

    /// <summary>The server the document was fetched from, so that a generated client calls back where it came from.</summary>
    public static void ServerFromRequest(OpenApiDocument document, HttpRequest request) =>
        document.Servers = [new OpenApiServer { Url = $"{request.Scheme}://{request.Host.Value}{request.PathBase}", Description = "This service" }];

    sealed class DescribeTags : IDocumentFilter
    {
        public void Apply(OpenApiDocument document, DocumentFilterContext context)
        {
            // A new group's tag without a description here is served without one; OpenApiDocumentTests' lint names it.
            var used = context.ApiDescriptions.SelectMany(d => d.ActionDescriptor.EndpointMetadata.OfType<ITagsMetadata>()).SelectMany(t => t.Tags).ToHashSet();
            document.Tags = new HashSet<OpenApiTag>(used.Order().Select(t => new OpenApiTag { Name = t, Description = TagDescriptions.GetValueOrDefault(t) }));
        }
    }

    /// <summary>
    /// A route behind a key answers 401 without a valid one (auth on), and an API route 429 past the project's
    /// <c>Limits:RequestsPerMinute</c>: both with OpenAI's error object, declared where the endpoint did not itself.
    /// </summary>
    sealed class ProtectedRouteErrors : IOperationFilter
    {
        public void Apply(OpenApiOperation operation, OperationFilterContext context)
        {
            var metadata = context.ApiDescription.ActionDescriptor.EndpointMetadata;
            if (!metadata.OfType<IAuthorizeData>().Any() || metadata.OfType<IAllowAnonymous>().Any()) return;
            operation.Responses ??= [];
            Add(operation, context, "401", "No API key, or one that is unknown or revoked (once auth is on).");
            if (OpenAiErrors.IsApiRoute("/" + context.ApiDescription.RelativePath))
                Add(operation, context, "429", "Past the project's requests per minute (Limits:RequestsPerMinute), with Retry-After.");
        }

        static void Add(OpenApiOperation operation, OperationFilterContext context, string status, string description)
        {
            if (operation.Responses!.ContainsKey(status)) return;
            var schema = context.SchemaGenerator.GenerateSchema(typeof(ErrorResponse), context.SchemaRepository);
            operation.Responses[status] = new OpenApiResponse
            {
                Description = description,
                Content = new Dictionary<string, IOpenApiMediaType> { ["application/json"] = new OpenApiMediaType { Schema = schema } },
            };
        }
    }
}
