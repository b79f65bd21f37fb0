using Microsoft.AspNetCore.DataProtection;

namespace AdapterService.Api.Webhooks;

public static class WebhookServices
{
    /// <summary>
    /// Webhooks: the settings (<c>Webhooks:*</c>, checked now), Data Protection with its keys in <c>{data}/keys</c> (shared
    /// by every process over the same data folder), the URL policy and the outbox sender.
    /// </summary>
    public static IServiceCollection AddWebhooks(this IServiceCollection services, IConfiguration configuration)
    {
        var options = configuration.GetSection("Webhooks").Get<WebhookOptions>() ?? new WebhookOptions();
        foreach (var network in options.AllowedNetworks)
            if (!System.Net.IPNetwork.TryParse(network, out _))
                throw new InvalidOperationException($"Webhooks:AllowedNetworks: '{network}' is not a network in CIDR form (such as 10.0.0.0/8).");
        if (options.MaxAttempts < 1 || options.TimeoutSeconds <= 0 || options.FirstRetrySeconds < 0 || options.PollSeconds <= 0)
            throw new InvalidOperationException("Webhooks: MaxAttempts must be at least 1, TimeoutSeconds and PollSeconds above 0, FirstRetrySeconds not negative.");
        var data = Path.GetFullPath(configuration["Service:DataDirectory"] ?? "data");
        services.AddDataProtection().SetApplicationName("adapter-service").PersistKeysToFileSystem(new DirectoryInfo(Path.Combine(data, "keys")));
        services.AddSingleton(options).AddSingleton<WebhookTargets>().AddSingleton<WebhookSecrets>();
        services.AddHostedService<WebhookSender>();
        return services;
    }
}
