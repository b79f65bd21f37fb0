using System.Security.Cryptography;
using System.Text;
using Microsoft.AspNetCore.DataProtection;

namespace AdapterService.Api.Webhooks;

/// <summary>
/// An endpoint's signing secret: made here, stored only encrypted with ASP.NET Core Data Protection, and used to sign
/// each delivery the way Standard Webhooks (and OpenAI, whose clients verify it) do.
/// </summary>
/// <remarks>
/// Data Protection's keys live in <c>{data}/keys</c> under one application name, so a restarted process, and every API
/// process sharing the data folder (scale-out), can decrypt what another one stored. Losing that folder makes the stored
/// secrets unreadable: such an endpoint's deliveries fail with that reason, and the endpoint must be created again.
/// </remarks>
public sealed class WebhookSecrets(IDataProtectionProvider provider)
{
    const string Prefix = "whsec_";
    readonly IDataProtector protector = provider.CreateProtector("AdapterService.Webhooks.Secret.v1");

    /// <summary>A new secret: <c>whsec_</c> and 32 random bytes in base64 (Standard Webhooks' form).</summary>
    public static string New() => Prefix + Convert.ToBase64String(RandomNumberGenerator.GetBytes(32));

    public string Protect(string secret) => protector.Protect(secret);

    public string Unprotect(string protectedSecret) => protector.Unprotect(protectedSecret);

    /// <summary>
    /// The <c>webhook-signature</c> header: <c>v1,</c> and the base64 HMAC-SHA256 of <c>{id}.{timestamp}.{body}</c>, keyed
    /// with the secret's bytes (the base64 after <c>whsec_</c>).
    /// </summary>
    public static string Sign(string secret, string webhookId, long timestamp, string body)
    {
        var key = Convert.FromBase64String(secret.StartsWith(Prefix, StringComparison.Ordinal) ? secret[Prefix.Length..] : secret);
        var mac = HMACSHA256.HashData(key, Encoding.UTF8.GetBytes($"{webhookId}.{timestamp}.{body}"));
        return "v1," + Convert.ToBase64String(mac);
    }
}
