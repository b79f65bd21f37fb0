using System.Text.RegularExpressions;
using AdapterService.Core.Models;

namespace AdapterService.Core.Adapters;

/// <summary>PEFT's rules for which linear layers an adapter wraps, written once for every method.</summary>
public static class TargetModules
{
    /// <summary>
    /// The layers whose path ends with one of <paramref name="targets"/> (at a dot boundary), or, when
    /// <paramref name="targets"/> is a single string that is not a plain name, whose full path matches it as a regex;
    /// "all-linear" means every linear layer but the output head.
    /// </summary>
    public static List<(string Path, AdaptableLinear Layer)> Find(TorchSharp.torch.nn.Module model, IReadOnlyList<string> targets)
    {
        var layers = model.LinearLayers().ToList();
        var matched = Match(layers.Select(l => l.Path), targets).ToHashSet();
        return layers.Where(l => matched.Contains(l.Path)).ToList();
    }

    /// <summary>The module paths out of <paramref name="paths"/> that <paramref name="targets"/> select; throws when none.</summary>
    public static List<string> Match(IEnumerable<string> paths, IReadOnlyList<string> targets)
    {
        var all = paths.ToList();
        Func<string, bool> match = targets switch
        {
            ["all-linear"] => path => path != "lm_head",
            [var pattern] when !IsPlainName(pattern) => path => MatchesRegex(path, pattern),
            _ => path => targets.Any(t => path == t || path.EndsWith("." + t, StringComparison.Ordinal)),
        };
        var found = all.Where(match).ToList();
        if (found.Count == 0)
            throw new ArgumentException(
                $"target_modules [{string.Join(", ", targets)}] match no layer of the model; its linear layers are named " +
                string.Join(", ", all.Select(p => p.Split('.')[^1]).Distinct()));
        return found;
    }

    /// <summary>A user's regex, with a time limit so a pathological pattern cannot hold a thread.</summary>
    static bool MatchesRegex(string path, string pattern)
    {
        try { return Regex.IsMatch(path, $"^(?:{pattern})$", RegexOptions.None, TimeSpan.FromMilliseconds(100)); }
        catch (RegexMatchTimeoutException) { throw new ArgumentException($"target_modules regex '{pattern}' takes too long to match"); }
        catch (RegexParseException e) { throw new ArgumentException($"target_modules regex '{pattern}' is not valid: {e.Message}"); }
    }

    public static bool IsPlainName(string target) => Regex.IsMatch(target, @"^[A-Za-z0-9_.]+$");
}
