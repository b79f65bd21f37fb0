using System.Text.Json;
using AdapterService.Core.Jobs;

namespace AdapterService.Core.Tests.Jobs;

/// <summary><c>method.reinforcement</c> as the objective resolves it: the grader checked, OpenAI's hyperparameters and ours, errors naming the field.</summary>
public sealed class ReinforcementObjectiveTests
{
    const string Grader = """{"type": "string_check", "name": "a", "operation": "eq", "input": "{{sample.output_text}}", "reference": "{{item.answer}}"}""";

    static (System.Text.Json.Nodes.JsonObject? Settings, JobSpecError? Error) Resolve(string section) =>
        JobObjectives.Find("reinforcement")!.Resolve(JsonDocument.Parse(section).RootElement);

    [Fact]
    public void StoresTheGraderAndEveryHyperparameterWithItsDefault()
    {
        var (settings, error) = Resolve($$$"""{"grader": {{{Grader}}}, "hyperparameters": {"compute_multiplier": 0.5, "reasoning_effort": "low", "n_epochs": 2}}""");
        Assert.Null(error);
        var h = settings!["hyperparameters"]!;
        Assert.Equal((0.5, 0.0, 4.0, 0.04, 64.0, "low"), ((double)h["compute_multiplier"]!, (double)h["eval_interval"]!, (double)h["eval_samples"]!,
            (double)h["beta"]!, (double)h["max_completion_tokens"]!, (string)h["reasoning_effort"]!));
        Assert.Equal("string_check", (string)settings["grader"]!["type"]!);
        Assert.Equal(4, ReinforcementObjective.GroupSize(0.5));
        Assert.Equal("a", ReinforcementObjective.GraderOf(settings).Name);
    }

    [Theory]
    [InlineData("""{}""", "method.reinforcement.grader")]
    [InlineData("""{"grader": {"type": "python", "source": ""}}""", "method.reinforcement.grader.type")]
    [InlineData("""{"grader": {"type": "multi", "calculate_output": "x", "graders": {"x": {"type": "nope"}}}}""", "method.reinforcement.grader.graders.x.type")]
    [InlineData($$$"""{"grader": {{{Grader}}}, "hyperparameters": {"compute_multiplier": 9}}""", "method.reinforcement.hyperparameters.compute_multiplier")]
    [InlineData($$$"""{"grader": {{{Grader}}}, "hyperparameters": {"eval_samples": 0}}""", "method.reinforcement.hyperparameters.eval_samples")]
    [InlineData($$$"""{"grader": {{{Grader}}}, "hyperparameters": {"reasoning_effort": "extreme"}}""", "method.reinforcement.hyperparameters.reasoning_effort")]
    [InlineData($$$"""{"grader": {{{Grader}}}, "hyperparameters": {"early_stopping_patience": 2}}""", "method.reinforcement.hyperparameters.early_stopping_patience")]
    [InlineData($$$"""{"grader": {{{Grader}}}, "hyperparameters": {"temperature": 2}}""", "method.reinforcement.hyperparameters.temperature")]
    [InlineData($$$"""{"grader": {{{Grader}}}, "judge": 1}""", "method.reinforcement.judge")]
    public void BadSettingsNameTheirField(string section, string param) => Assert.Equal(param, Resolve(section).Error?.Param);
}
