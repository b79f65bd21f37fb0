using AdapterService.Api.Infrastructure;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterService.Api.Apis;

/// <summary>One image and, optionally, the model for it (else the request's <c>model</c>).</summary>
/// <param name="Image">The image as base64 PNG (8-bit grayscale, RGB or RGBA, not interlaced), of the model's image size.</param>
/// <param name="Model" example="ft:vit-fashion-mnist-demo::ftjob-abc">A ViT base model or a fine-tuned model of one.</param>
public sealed record ClassifyInput(string? Image, string? Model);

/// <summary>Images to classify: <c>images</c> (all with <c>model</c>) or <c>input</c> (each naming its own model, or <c>model</c>'s).</summary>
/// <param name="Model" example="vit-fashion-mnist-demo">The model for images that name none.</param>
/// <param name="Images">Base64 PNGs, classified with <c>model</c>.</param>
/// <param name="Input">Images that may each name their own model; rows of different adapters of one base run in one forward pass.</param>
public sealed record ClassifyRequest(string? Model, IReadOnlyList<string?>? Images, IReadOnlyList<ClassifyInput?>? Input);

/// <summary>One image's predicted label and each label's probability, in the model's label order.</summary>
public sealed record ClassificationDto(int Index, string Object, string Model, string Label, IReadOnlyDictionary<string, double> Probabilities);

public sealed record ClassifyResponse(string Object, IReadOnlyList<ClassificationDto> Data);

public static class ClassifyApi
{
    const int MaxImages = 256;
    /// <summary>The grayscale bytes one request's images may decode to together.</summary>
    const long MaxDecodedBytes = 64L << 20;

    public static IEndpointRouteBuilder MapClassifyApi(this IEndpointRouteBuilder app)
    {
        app.MapPost("/v1/classify", Classify).WithName("classifyImages").WithTags("Classification").WithErrors(400, 404)
            .WithSummary("Classify images with ViT base models or their fine-tuned adapters, in order")
            .WithDescription("`{\"model\": \"vit-fashion-mnist-demo\", \"images\": [\"<base64 PNG>\", ...]}`, or `input: [{\"image\": ..., \"model\": ...}]` to give each image its own model.");
        return app;
    }

    static async Task<Results<Ok<ClassifyResponse>, JsonHttpResult<ErrorResponse>>> Classify(
        ClassifyRequest request, ServiceDbContext db, IBlobStore blobs, ImageClassifier classifier, CancellationToken cancel)
    {
        if (request.Images is not null && request.Input is not null) return OpenAiErrors.BadRequest("Give either 'images' or 'input', not both.", "input");
        var items = request.Input?.Select((item, i) => (Image: item?.Image, Model: item?.Model ?? request.Model, Param: $"input[{i}]")).ToList()
                    ?? request.Images?.Select((image, i) => (Image: image, Model: request.Model, Param: $"images[{i}]")).ToList();
        if (items is null) return OpenAiErrors.BadRequest("Missing required parameter: 'images' (or 'input').", "images");
        if (items.Count is 0 or > MaxImages) return OpenAiErrors.BadRequest($"Give 1 to {MaxImages} images.", request.Input is null ? "images" : "input");

        var leases = new List<AdapterCache.Lease>();
        try
        {
            var rows = new List<(BaseModel Base, string BaseFolder, ClassifyRow Row, string Model)>();
            long decodedBytes = 0;
            foreach (var (image, modelName, param) in items)
            {
                if (string.IsNullOrEmpty(modelName)) return OpenAiErrors.BadRequest($"Missing required parameter: 'model' (for {param}).", "model");
                var model = await ModelNames.ResolveAsync(db, modelName, cancel);
                if (model is null) return OpenAiErrors.NotFound($"The model '{modelName}' does not exist.", "model", "model_not_found");
                if (model.Base.Family != "vit")
                    return OpenAiErrors.BadRequest($"The model '{modelName}' is a {model.Base.Family} language model, not an image classifier.", "model", "model_not_supported");
                var baseFolder = blobs.Resolve(model.Base.BlobPath);
                var config = (VitConfig)ModelConfig.Load(Path.Combine(baseFolder, ModelFolder.ConfigFile));
                if (string.IsNullOrEmpty(image)) return OpenAiErrors.BadRequest($"Missing required parameter: '{param}' image.", param);
                GrayImage decoded;
                try
                {
                    // The size from the header, against the model's, before any pixel is allocated: a few KB can declare 4096×4096.
                    var png = Convert.FromBase64String(image);
                    var header = Png.ReadHeader(png);
                    if (header.Width != config.ImageSize || header.Height != config.ImageSize)
                        return OpenAiErrors.BadRequest($"{param} is {header.Width}×{header.Height}; {modelName} takes {config.ImageSize}×{config.ImageSize} images.", param, "invalid_image");
                    if ((decodedBytes += header.GrayBytes) > MaxDecodedBytes)
                        return OpenAiErrors.BadRequest($"The images decode to more than {MaxDecodedBytes >> 20} MiB of pixels together; send fewer per request.", param, "invalid_image");
                    decoded = Png.Decode(png);
                }
                catch (Exception e) when (e is FormatException or InvalidDataException)
                {
                    return OpenAiErrors.BadRequest($"{param} is not a base64 PNG this service decodes: {e.Message}", param, "invalid_image");
                }
                ServedAdapter? adapter = null;
                if (model.AdapterKey is { } key)
                {
                    var lease = await classifier.Adapters.AcquireAsync(key, () => ServedAdapter.Load(blobs.Resolve(model.AdapterBlobPath!), config));
                    leases.Add(lease);
                    adapter = lease.Entry.Adapter;
                }
                rows.Add((model.Base, baseFolder, new ClassifyRow(decoded, adapter), modelName));
            }

            var results = new ClassificationDto[rows.Count];
            foreach (var group in Enumerable.Range(0, rows.Count).GroupBy(i => rows[i].Base.Id))
            {
                var index = group.ToList();
                var predictions = classifier.Classify(rows[index[0]].BaseFolder, index.Select(i => rows[i].Row).ToList());
                for (int k = 0; k < index.Count; k++)
                    results[index[k]] = new ClassificationDto(index[k], "classification", rows[index[k]].Model, predictions[k].Label,
                        predictions[k].Probabilities.ToDictionary(p => p.Label, p => p.Probability));
            }
            return TypedResults.Ok(new ClassifyResponse("list", results));
        }
        finally
        {
            foreach (var lease in leases) lease.Dispose();
        }
    }
}
