using System.Net;
using System.Net.Sockets;

namespace AdapterService.Api.Webhooks;

/// <summary>Settings <c>Webhooks:*</c>: where webhooks may go, and how they are delivered and retried.</summary>
public sealed class WebhookOptions
{
    /// <summary>
    /// Host names an endpoint's URL may name (<c>hooks.example.com</c>, or <c>*.example.com</c> for its subdomains).
    /// Empty (the default): any host whose addresses are public.
    /// </summary>
    public List<string> AllowedHosts { get; set; } = [];
    /// <summary>
    /// Non-public networks (CIDR: <c>10.1.2.0/24</c>, <c>127.0.0.1/32</c>) that endpoints may reach nonetheless. Empty (the
    /// default): loopback, private, link-local, shared, multicast and reserved addresses are all refused.
    /// </summary>
    public List<string> AllowedNetworks { get; set; } = [];
    /// <summary>Whether <c>http://</c> URLs are accepted (default: https only).</summary>
    public bool AllowHttp { get; set; }
    /// <summary>How long one attempt may take, connection included.</summary>
    public double TimeoutSeconds { get; set; } = 10;
    /// <summary>Attempts in all before a delivery is given up (marked <c>failed</c>).</summary>
    public int MaxAttempts { get; set; } = 8;
    /// <summary>The wait after the first failed attempt; each further one waits twice as long as the one before.</summary>
    public double FirstRetrySeconds { get; set; } = 30;
    /// <summary>How often the sender looks for due deliveries.</summary>
    public double PollSeconds { get; set; } = 1;

    /// <summary>The wait after failed attempt number <paramref name="attempts"/> (1-based): 30 s, 1, 2, 4, 8, 16, 32 min by default.</summary>
    public TimeSpan RetryDelay(int attempts) => TimeSpan.FromSeconds(FirstRetrySeconds * Math.Pow(2, attempts - 1));
}

/// <summary>
/// Server-side request forgery: a webhook URL is the one place where a caller makes this server send requests where it
/// chooses. URLs are checked when an endpoint is created (scheme, host allowlist, and the addresses its host resolves
/// to), and every delivery connects only to an address checked at that moment (<see cref="ConnectAsync"/>), so a DNS
/// name that resolved to a public address at creation and to an internal one later (rebinding) is still refused.
/// </summary>
public sealed class WebhookTargets(WebhookOptions options)
{
    // Not reachable as a public internet host: RFC 6890's special-purpose registries, in short.
    static readonly IPNetwork[] NonPublic = new[]
    {
        "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "127.0.0.0/8", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
        "192.0.2.0/24", "192.88.99.0/24", "192.168.0.0/16", "198.18.0.0/15", "198.51.100.0/24", "203.0.113.0/24",
        "224.0.0.0/4", "240.0.0.0/4", "::/128", "::1/128", "64:ff9b::/96", "64:ff9b:1::/48", "100::/64", "2001::/23",
        "2001:db8::/32", "2002::/16", "fc00::/7", "fe80::/10", "ff00::/8",
    }.Select(IPNetwork.Parse).ToArray();

    readonly IPNetwork[] allowedNetworks = options.AllowedNetworks.Select(IPNetwork.Parse).ToArray();

    /// <summary>Whether a delivery may connect to <paramref name="address"/>: public, or in an allowed network.</summary>
    public bool MayConnect(IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6) address = address.MapToIPv4();
        return allowedNetworks.Any(n => n.Contains(address)) || !NonPublic.Any(n => n.Contains(address));
    }

    bool HostAllowed(string host) => options.AllowedHosts.Count == 0 || options.AllowedHosts.Any(pattern =>
        pattern.StartsWith("*.", StringComparison.Ordinal)
            ? host.EndsWith(pattern[1..], StringComparison.OrdinalIgnoreCase)
            : string.Equals(host, pattern, StringComparison.OrdinalIgnoreCase));

    /// <summary>Why <paramref name="url"/> may not be an endpoint (null: it may), in words for the API's 400.</summary>
    public async Task<string?> RefusalAsync(string? url, CancellationToken cancel)
    {
        if (string.IsNullOrWhiteSpace(url)) return "url is required.";
        if (url.Length > 2048) return "url must be at most 2048 characters.";
        if (!Uri.TryCreate(url, UriKind.Absolute, out var uri) || uri.Scheme is not ("https" or "http") || uri.Host.Length == 0)
            return "url must be an absolute https URL.";
        if (uri.Scheme == "http" && !options.AllowHttp)
            return "url must use https (http is accepted only where the server sets Webhooks:AllowHttp).";
        if (uri.UserInfo.Length > 0) return "url must not carry a user name or password.";
        if (!HostAllowed(uri.IdnHost))
            return $"url's host {uri.Host} is not one webhooks may be sent to on this server (Webhooks:AllowedHosts).";
        IPAddress[] addresses;
        try
        {
            addresses = IPAddress.TryParse(uri.IdnHost, out var literal) ? [literal] : await Dns.GetHostAddressesAsync(uri.IdnHost, cancel);
        }
        catch (Exception e) when (e is SocketException or ArgumentException or FormatException)   // no such name, or not a name at all
        {
            return $"url's host {uri.Host} could not be resolved.";
        }
        if (addresses.Length == 0) return $"url's host {uri.Host} could not be resolved.";
        if (addresses.FirstOrDefault(a => !MayConnect(a)) is { } refused)
            return $"url's host {uri.Host} is a loopback, private, link-local or reserved address ({refused}); webhooks go to public addresses only " +
                   "unless the server allows that network (Webhooks:AllowedNetworks).";
        return null;
    }

    /// <summary>
    /// The sender's connection: the host resolved now, every address it resolves to checked, and the connection made to a
    /// checked address (never resolved again in between).
    /// </summary>
    public async ValueTask<Stream> ConnectAsync(SocketsHttpConnectionContext context, CancellationToken cancel)
    {
        var host = context.DnsEndPoint.Host;
        var addresses = IPAddress.TryParse(host, out var literal) ? [literal] : await Dns.GetHostAddressesAsync(host, cancel);
        if (addresses.Length == 0 || addresses.Any(a => !MayConnect(a)))
            throw new HttpRequestException($"the endpoint's host {host} resolves to an address webhooks may not reach");
        var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        try
        {
            await socket.ConnectAsync(addresses, context.DnsEndPoint.Port, cancel);
            return new NetworkStream(socket, ownsSocket: true);
        }
        catch
        {
            socket.Dispose();
            throw;
        }
    }
}
