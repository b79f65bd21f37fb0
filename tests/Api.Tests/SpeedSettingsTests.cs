using AdapterService.Workers;
using Microsoft.Extensions.Configuration;

namespace AdapterService.Api.Tests;

/// <summary><c>Workers:Speed:*</c> reach the trainer's options as written in appsettings or environment variables.</summary>
public sealed class SpeedSettingsTests
{
    static TrainingOptions Bind(Dictionary<string, string?> settings) =>
        new ConfigurationBuilder().AddInMemoryCollection(settings).Build().GetSection("Workers").Get<TrainingOptions>() ?? new TrainingOptions();

    [Fact]
    public void DefaultsPackAndComputeTheWholeBatchInFloat32()
    {
        var speed = Bind([]).Speed;
        Assert.True(speed.Packing);
        Assert.Null(speed.MicroBatchSize);
        Assert.False(speed.GradientCheckpointing);
    }

    [Fact]
    public void SettingsBindAndBadOnesAreNamed()
    {
        var speed = Bind(new()
        {
            ["Workers:Speed:Packing"] = "false", ["Workers:Speed:MicroBatchSize"] = "4",
            ["Workers:Speed:GradientCheckpointing"] = "true",
        }).Speed;
        Assert.Equal((false, 4, true), (speed.Packing, speed.MicroBatchSize, speed.GradientCheckpointing));
        Assert.Null(speed.Problem());
        Assert.Contains("MicroBatchSize", Bind(new() { ["Workers:Speed:MicroBatchSize"] = "0" }).Speed.Problem());
    }
}
