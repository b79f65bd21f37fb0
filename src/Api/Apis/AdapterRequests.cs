using System.Text.Json;
using AdapterService.Api.Infrastructure;
using AdapterService.Core.Adapters;
using AdapterService.Core.Models;
using Microsoft.AspNetCore.Http.HttpResults;

namespace AdapterService.Api.Apis;

/// <summary>Our extension: which adapter to train and its options (see docs/METHODS.md).</summary>
/// <param name="Type" example="lora">The adapter method: "lora", "dora", "lily", "rlrr" or "mixlora".</param>
/// <param name="Rank" example="8">LoRA/DoRA rank r and Lily's LP dimension d, 1-256 (default 8); RLRR's rescaling rank, 1-64 (default 1). A fine-tuning job may list 2-4 ranks: a sweep (see docs/API.md).</param>
/// <param name="Alpha" example="16">LoRA/DoRA alpha; the update is scaled by alpha / r (default 2·r).</param>
/// <param name="Dropout" example="0.05">Dropout on the adapter path during training, in [0, 1) (default 0); LoRA, DoRA and Lily.</param>
/// <param name="TargetModules">Layers to adapt: module names such as ["q_proj", "v_proj"], one regex over module paths, or "all-linear" (the default).</param>
/// <param name="NumExperts" example="4">Lily: HP experts shared by the layers of a module type (default 4); MixLoRA: LoRA experts per feed-forward block (default 8); 1-64.</param>
/// <param name="Scaling" example="1">Lily: the scale s of the update (default 1).</param>
/// <param name="RouterMean" example="sequence">Lily: "sequence" (each sequence averages its own tokens' router weights, causally) or "batch" (the paper's mean over the batch, in training).</param>
/// <param name="Monoscale">Lily: the paper's ablation without router (the experts summed).</param>
/// <param name="TopK" example="2">MixLoRA: experts per token, 1 to num_experts (default 2).</param>
/// <param name="RouterAuxLossCoef" example="0.01">MixLoRA: weight of the load-balance loss, 0-10 (default 0.01).</param>
/// <remarks><see cref="Rank"/> is read as JSON so that a list (a rank sweep) or a wrong type gets a 400 naming <c>adapter.rank</c>, not the body's generic one.</remarks>
public sealed record AdapterRequest(string? Type, JsonElement? Rank, double? Alpha, double? Dropout, JsonElement? TargetModules,
    int? NumExperts = null, double? Scaling = null, string? RouterMean = null, bool? Monoscale = null, int? TopK = null, double? RouterAuxLossCoef = null)
{
    public AdapterOptions ToOptions(int? rank) => new(rank, Alpha, Dropout, NumExperts, Scaling, RouterMean, Monoscale, TopK, RouterAuxLossCoef);

    /// <summary>The request with one rank (a sweep member's).</summary>
    public AdapterRequest WithRank(int rank) => this with { Rank = JsonSerializer.SerializeToElement(rank) };

    /// <summary>True when <c>rank</c> is a list: a rank sweep.</summary>
    public bool ListsRanks() => Rank is { ValueKind: JsonValueKind.Array };
}

/// <summary>The adapter a job trains; options that do not apply to its method are null.</summary>
public sealed record AdapterDto(string Type, int Rank, double? Alpha, double? Dropout, IReadOnlyList<string> TargetModules,
    int? NumExperts = null, double? Scaling = null, string? RouterMean = null, bool? Monoscale = null, int? TopK = null, double? RouterAuxLossCoef = null)
{
    /// <summary>The config's options as its method shows them (<see cref="AdapterMethod.ToOptions"/>).</summary>
    public static AdapterDto From(AdapterConfig config)
    {
        var o = AdapterMethods.Of(config).ToOptions(config);
        return new(config.Method, o.Rank ?? 0, o.Alpha, o.Dropout, config.TargetModules, o.NumExperts, o.Scaling, o.RouterMean, o.Monoscale, o.TopK, o.RouterAuxLossCoef);
    }
}

/// <summary>The API's adapter requests read into configs, each method's part looked up in <see cref="AdapterMethods"/>.</summary>
public static class AdapterRequests
{
    /// <summary>The config <paramref name="request"/> asks for on <paramref name="baseConfig"/> (LoRA when absent), or null with a 400 in <paramref name="error"/>.</summary>
    public static AdapterConfig? Parse(AdapterRequest? request, ModelConfig baseConfig, out JsonHttpResult<ErrorResponse>? error)
    {
        error = null;
        var type = request?.Type ?? "lora";
        if (AdapterMethods.Find(type) is not { } method)
        {
            error = OpenAiErrors.BadRequest($"Adapter type '{type}' is not supported; supported: {string.Join(", ", AdapterMethods.Names.Select(t => $"'{t}'"))}.",
                "adapter.type", "unsupported_adapter_type");
            return null;
        }
        // Every linear layer but the output head unless the request says otherwise: on small bases this learns far
        // better than PEFT's q_proj/v_proj default. Stored as the module names, as PEFT writes it.
        string[] allLinear = TargetModules.Match(baseConfig.LinearPaths(), ["all-linear"])
            .Select(p => p.Split('.')[^1]).Distinct().Order().ToArray();
        IReadOnlyList<string>? targets = method.DefaultTargets(allLinear);
        if (request?.TargetModules is { } requested)
        {
            targets = requested.ValueKind switch
            {
                JsonValueKind.String => [requested.GetString()!],
                JsonValueKind.Array when requested.EnumerateArray().All(t => t.ValueKind == JsonValueKind.String) =>
                    requested.EnumerateArray().Select(t => t.GetString()!).ToArray(),
                _ => null,
            };
            if (targets is null || targets.Count == 0)
            {
                error = OpenAiErrors.BadRequest("adapter.target_modules must be a non-empty list of module names or a regex string.", "adapter.target_modules");
                return null;
            }
            if (targets is ["all-linear"]) targets = allLinear;
        }
        // The checks every method shares, in the order the API has always reported them; then the method's own.
        int? rank = null;
        string? problem = null;
        if (request?.Rank is { ValueKind: not JsonValueKind.Null } r)
        {
            // A number, or a number in a string as the API's JSON options have always read one ("8").
            if (r.ValueKind == JsonValueKind.Number && r.TryGetInt32(out var given)
                || r.ValueKind == JsonValueKind.String && int.TryParse(r.GetString(), System.Globalization.NumberStyles.AllowLeadingSign, System.Globalization.CultureInfo.InvariantCulture, out given))
                rank = given;
            else problem = r.ValueKind == JsonValueKind.Array
                ? "adapter.rank must be one integer between 1 and 256 here (a list of ranks is a sweep, which a fine-tuning job from a base model takes)."
                : $"adapter.rank must be an integer between 1 and 256, got {r.GetRawText()}.";
        }
        problem ??= request switch
        {
            _ when rank is < 1 or > 256 => "adapter.rank must be between 1 and 256.",
            { Alpha: <= 0 } => "adapter.alpha must be positive.",
            { Dropout: < 0 or >= 1 } => "adapter.dropout must be in [0, 1).",
            { NumExperts: < 1 or > 64 } => "adapter.num_experts must be between 1 and 64.",
            { Scaling: { } s } when !double.IsFinite(s) || s <= 0 => "adapter.scaling must be a positive number.",
            { RouterMean: { } m } when m is not ("sequence" or "batch") => "adapter.router_mean must be \"sequence\" or \"batch\".",
            { TopK: < 1 } or { TopK: > 64 } => "adapter.top_k must be between 1 and num_experts.",
            { TopK: { } k, NumExperts: var n } when k > (n ?? 8) => "adapter.top_k must be between 1 and num_experts.",
            { RouterAuxLossCoef: { } c } when !double.IsFinite(c) || c < 0 || c > 10 => "adapter.router_aux_loss_coef must be between 0 and 10.",
            _ => null,
        };
        var options = request?.ToOptions(rank) ?? new AdapterOptions();
        var config = method.FromOptions(options, targets);
        problem ??= method.CheckOptions(options);
        if (problem is null && config is MixLoraConfig && MixLoraAdapter.Unsupported(baseConfig) is { } refusal) problem = "adapter.type 'mixlora' does not apply here: " + refusal + ".";
        if (problem is null && config.TargetModules.Count > 0)
        {
            try { TargetModules.Match(baseConfig.LinearPaths(), config.TargetModules); }
            catch (ArgumentException e) { problem = "adapter." + e.Message; }
        }
        if (problem is null) return config;
        error = OpenAiErrors.BadRequest(problem, "adapter." + problem.Split(' ')[0].Split('.')[^1]);
        return null;
    }

    /// <summary>
    /// A job that continues from a fine-tuned model trains that model's adapter: each option <paramref name="request"/>
    /// gives must be what <paramref name="start"/> has (as the API shows it), or the answer is a 400 naming the first that is not.
    /// </summary>
    public static JsonHttpResult<ErrorResponse>? Conflict(AdapterRequest? request, AdapterConfig start, string startName, ModelConfig baseConfig)
    {
        if (request is null) return null;
        var have = AdapterDto.From(start);
        var startOptions = typeof(AdapterDto).GetProperties().ToDictionary(p => p.Name, p => p.GetValue(have));
        if (request.Type is { } t && t != start.Method)
            return OpenAiErrors.BadRequest($"The job continues from {startName}, a {start.Method} adapter: adapter.type must be left out or be '{start.Method}', not '{t}'.", "adapter.type");
        // What the request asks for, read as a job from the base would read it (module names expanded), for comparison.
        var asked = Parse(request with { Type = start.Method }, baseConfig, out var error);
        if (asked is null) return error;
        var askedOptions = AdapterDto.From(asked);
        foreach (var property in typeof(AdapterRequest).GetProperties())
        {
            if (property.GetValue(request) is null || typeof(AdapterDto).GetProperty(property.Name) is not { } shown) continue;
            object? want = shown.GetValue(askedOptions), got = startOptions[property.Name];
            bool same = want is IEnumerable<string> a && got is IEnumerable<string> b ? a.Order().SequenceEqual(b.Order()) : Equals(want, got);
            if (same) continue;
            string name = "adapter." + System.Text.Json.JsonNamingPolicy.SnakeCaseLower.ConvertName(property.Name);
            string value = got is IEnumerable<string> list ? $"[{string.Join(", ", list)}]" : got?.ToString() ?? "unset";
            return OpenAiErrors.BadRequest($"The job continues from {startName}, whose adapter has {name.Split('.')[1]} {value}: {name} must be left out or match it.", name);
        }
        return null;
    }
}
