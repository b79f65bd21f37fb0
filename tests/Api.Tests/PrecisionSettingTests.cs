using AdapterService.Core.Inference;
using AdapterService.Core.Models;
using AdapterService.Workers;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using static TorchSharp.torch;

namespace AdapterService.Api.Tests;

/// <summary>The service with <c>Models:Precision=bf16</c> (over ServiceFactory's fp32, which is also what a component that ignored the setting would use).</summary>
public sealed class PrecisionServiceFactory : ServiceFactory
{
    public const string Setting = "bf16";

    protected override void ConfigureWebHost(IWebHostBuilder builder)
    {
        base.ConfigureWebHost(builder);
        builder.UseSetting("Models:Precision", Setting);
    }
}

/// <summary><c>Models:Precision</c> is the one precision of the frozen base: the trainer and the serving engine both take it.</summary>
public sealed class PrecisionSettingTests(PrecisionServiceFactory factory) : IClassFixture<PrecisionServiceFactory>
{
    [Fact]
    public void TheTrainerAndTheEngineBothLoadBasesInTheConfiguredPrecision()
    {
        _ = factory.CreateClient();   // starts the host
        var expected = BasePrecision.Resolve(PrecisionServiceFactory.Setting).MatrixType;
        Assert.Equal(ScalarType.BFloat16, expected);   // not the float32 that InferenceEngine and ModelFolder.Load default to
        Assert.Equal(expected, factory.Services.GetRequiredService<InferenceEngine>().Precision.MatrixType);
        using var scope = factory.Services.CreateScope();
        Assert.Equal(expected, scope.ServiceProvider.GetRequiredService<FineTuningJobRunner>().Precision.MatrixType);
    }

    static IConfiguration Settings(Dictionary<string, string?> settings) => new ConfigurationBuilder().AddInMemoryCollection(settings).Build();

    [Fact]
    public void TheRetiredBf16KeyIsRefusedWithItsReplacement()
    {
        var e = Assert.Throws<InvalidOperationException>(() => new Microsoft.Extensions.DependencyInjection.ServiceCollection().AddBasePrecision(Settings(new() { ["Workers:Speed:Bf16"] = "true" })));
        Assert.Equal("Workers:Speed:Bf16 (true) is retired: set Models:Precision to bf16, fp32 or auto instead (it now covers training and serving alike; docs/API.md)", e.Message);
    }

    [Fact]
    public void ABadValueIsRefusedNamingTheKey()
    {
        var e = Assert.Throws<InvalidOperationException>(() => new Microsoft.Extensions.DependencyInjection.ServiceCollection().AddBasePrecision(Settings(new() { ["Models:Precision"] = "half" })));
        Assert.Equal("Models:Precision is 'half'; it must be one of auto, bf16, fp32", e.Message);
    }
}
