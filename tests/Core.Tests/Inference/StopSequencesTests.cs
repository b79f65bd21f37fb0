using AdapterService.Core.Inference;

namespace AdapterService.Core.Tests.Inference;

public sealed class StopSequencesTests
{
    [Fact]
    public void AStopSplitAcrossPushesIsCaughtAndTheTextBeforeItEmitted()
    {
        var stops = new StopSequences(["END"]);
        Assert.Equal(("hello ", false), stops.Push("hello E"));
        Assert.Equal(("", false), stops.Push("N"));
        Assert.Equal(("", true), stops.Push("D and more"));
    }

    [Fact]
    public void AStopInsideOnePushCutsTheTextThere()
    {
        var stops = new StopSequences(["\n\n", "###"]);
        Assert.Equal(("a", true), stops.Push("a###b\n\nc"));   // the earliest stop wins
    }

    [Fact]
    public void APartialStopIsHeldBackThenReleased()
    {
        var stops = new StopSequences(["stop"]);
        Assert.Equal(("go ", false), stops.Push("go st"));
        Assert.Equal(("", false), stops.Push(""));   // still a prefix
        Assert.Equal("st", stops.Flush());
        Assert.Equal("", stops.Flush());

        Assert.Equal(("", false), stops.Push("s"));
        Assert.Equal(("sx", false), stops.Push("x"));   // no longer a prefix: released on the next push
    }

    [Fact]
    public void TheLongestPrefixOfAnyStopIsHeld()
    {
        var stops = new StopSequences(["abc", "bcd"]);
        Assert.Equal(("x", false), stops.Push("xab"));          // "ab" could start "abc"
        Assert.Equal(("", true), stops.Push("cd"));             // "abcd": "abc" starts first
    }

    [Fact]
    public void WithoutStopsTextPassesThrough()
    {
        foreach (var stops in new[] { new StopSequences(null), new StopSequences([]), new StopSequences([""]) })
        {
            Assert.Equal(("abc", false), stops.Push("abc"));
            Assert.Equal(("", false), stops.Push(""));
            Assert.Equal("", stops.Flush());
        }
    }
}
