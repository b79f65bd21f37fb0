namespace AdapterService.Core.Adapters;

/// <summary>
/// The registry of adapter methods: every part of the service that depends on the method (the API's accepted types,
/// request options and DTOs, <c>peft_type</c> when reading a folder, training, serving, merging, combination, import)
/// looks the method up here. Adding a method is one folder and one line below.
/// </summary>
public static class AdapterMethods
{
    public static readonly AdapterMethod Lora = new LoraMethod(dora: false);
    public static readonly AdapterMethod Dora = new LoraMethod(dora: true);
    public static readonly AdapterMethod Lily = new LilyMethod();
    public static readonly AdapterMethod Rlrr = new RlrrMethod();
    public static readonly AdapterMethod MixLora = new MixLoraMethod();

    /// <summary>Every method, in the order the API lists them.</summary>
    public static IReadOnlyList<AdapterMethod> All { get; } = [Lora, Dora, Lily, Rlrr, MixLora];

    /// <summary>The API's adapter types.</summary>
    public static IReadOnlyList<string> Names { get; } = All.Select(m => m.Name).ToArray();

    /// <summary>The <c>peft_type</c>s a folder may name.</summary>
    public static IReadOnlyList<string> PeftTypes { get; } = All.Select(m => m.PeftType).Distinct().ToArray();

    /// <summary>The methods adapters of which can be combined.</summary>
    public static IReadOnlyList<string> Combinable { get; } = All.Where(m => m.CanCombine).Select(m => m.Name).ToArray();

    /// <summary>The method of API type <paramref name="name"/>, or null.</summary>
    public static AdapterMethod? Find(string name) => All.FirstOrDefault(m => m.Name == name);

    /// <summary>The method that reads folders of <paramref name="peftType"/>, or null.</summary>
    public static AdapterMethod? FindPeftType(string? peftType) => All.FirstOrDefault(m => m.PeftType == peftType);

    /// <summary>The method of <paramref name="config"/>; throws <see cref="ArgumentException"/> for a config no method registers.</summary>
    public static AdapterMethod Of(AdapterConfig config) =>
        All.FirstOrDefault(m => m.ConfigType == config.GetType() && m.Name == config.Method)
        ?? throw new ArgumentException($"adapter method {config.Method} is not supported");
}
