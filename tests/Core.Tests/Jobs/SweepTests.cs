using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Data;
using AdapterService.Core.Jobs;
using AdapterService.Core.Models;
using AdapterService.Core.Storage;

namespace AdapterService.Core.Tests.Jobs;

/// <summary>
/// How a sweep reads its list, gives each member its adapter and rate, scores its members and picks the winner
/// (<see cref="Sweep"/>). The training of the members is FusedTrainerTests' (members of different ranks fused train
/// what they train alone: FourLoraJobsFusedTrainTheAdaptersTheyTrainAlone fuses ranks 4, 2, 8 and 4).
/// </summary>
public class SweepTests
{
    static readonly JobLimits Limits = new(MinExamples: 10, MaxTrainingTokens: 10_000);
    static readonly LoraConfig Lora = new() { TargetModules = ["q_proj", "v_proj"] };
    static DataFile Text(string id = "file-t") => new(id, new FileFacts(TrainingFileFormat.Chat, 12, null, null), 500);
    static HyperparameterValues Hp(string json) => JsonSerializer.Deserialize<HyperparameterValues>(json, JsonSerializerOptions.Web)! with { Path = "hyperparameters" };
    static JsonElement Json(string json) => JsonDocument.Parse(json).RootElement;
    static Sweep Ranks(params double[] values) => Sweep.Read(Json(JsonSerializer.Serialize(values)), Sweep.Rank, JobSpecification.RankField, _ => true, "").Sweep!;

    static Checkpoint Point(int member, int step, double? similar) => new()
    {
        Id = $"ftckpt-{member}-{step}", JobId = "ftjob-x", Name = $"ft:x:ckpt-step-{step}-m{member + 1}", BaseModel = "tiny", StepNumber = step,
        BlobPath = "x", SweepMember = member,
        Metrics = JsonSerializer.Serialize(new Dictionary<string, object?> { ["step"] = step, ["eval_similar"] = similar }),
    };

    [Fact]
    public void ARankSweepIsResolvedAsTheSweepWithTheJobsOneLearningRate()
    {
        var (spec, error) = JobSpecification.Resolve(Hp("""{"learningRateMultiplier": 2}"""), Lora, TinyLlama.Config, Text(), Text("file-v"), Limits, rankSweep: Ranks(2, 8));
        Assert.Null(error);
        Assert.Equal(Sweep.Rank, spec!.Sweep!.Parameter);
        Assert.Equal([2.0, 8.0], spec.Sweep.Values);
        Assert.Equal(2, spec.LearningRateMultiplier);
    }

    [Theory]
    [InlineData("""{"learningRateMultiplier": [1, 2]}""", true, false, "adapter.rank")]   // two swept settings: the second is named
    [InlineData("""{}""", false, false, "validation_file")]                            // scored by validation loss without a validation file
    public void ARankSweepIsRefusedNamingTheField(string hp, bool validation, bool eval, string param)
    {
        var (spec, error) = JobSpecification.Resolve(Hp(hp), Lora, TinyLlama.Config, Text(), validation ? Text("file-v") : null, Limits,
            rankSweep: Ranks(2, 8), scoredByEval: eval);
        Assert.Null(spec);
        Assert.Equal(param, error!.Param);
    }

    [Fact]
    public void ASweepScoredByAnEvalNeedsNoValidationFile()
    {
        foreach (var (hp, rankSweep) in new[] { ("""{"learningRateMultiplier": [1, 2]}""", (Sweep?)null), ("""{}""", Ranks(2, 8)) })
        {
            var (spec, error) = JobSpecification.Resolve(Hp(hp), Lora, TinyLlama.Config, Text(), null, Limits, rankSweep: rankSweep, scoredByEval: true);
            Assert.Null(error);
            Assert.NotNull(spec!.Sweep);
        }
    }

    [Fact]
    public void ARankSweepsMemberTrainsItsOwnAdapterWithTheJobsRate()
    {
        var configs = new[] { Lora with { Rank = 2, Alpha = 4 }, Lora with { Rank = 8, Alpha = 16 } };
        var sweep = Ranks(2, 8) with { Adapters = [.. configs.Select(c => c.ToJson())] };
        var job = new FineTuningJob
        {
            Id = "ftjob-x", Model = "tiny", TrainingFile = "file-t", Epochs = 2, BatchSize = 4, LearningRateMultiplier = 3, AdapterType = "lora",
            AdapterConfig = configs[0].ToJson(), Sweep = sweep.ToJson(),
        };
        var stored = Sweep.Of(job)!;
        for (int m = 0; m < 2; m++)
        {
            Assert.Equal(configs[m].Rank, ((LoraConfig)AdapterConfig.Parse(job.AdapterConfigOf(m))).Rank);
            Assert.Equal(job.AdapterConfigOf(m), stored.AdapterConfigOf(job, m));
            Assert.Equal(3 * JobSpecification.BaseLearningRate, stored.HyperparametersOf(job, m).LearningRate, 12);
            Assert.Equal(configs[m].Rank, Convert.ToDouble(stored.Shown(job, m)["rank"]));
            Assert.Equal(3.0, stored.Shown(job, m)[Sweep.LearningRateMultiplier]);
        }
        Assert.Equal("member 2 (rank=8)", stored.Label(1));
        Assert.Equal(job.AdapterConfig, job.AdapterConfigOf(null));   // the job's own checkpoints (none in a sweep) and adapter
    }

    [Fact]
    public void ByValidationLossTheLowestWinsAndTiesGoToTheFirstListed()
    {
        var sweep = new Sweep(Sweep.LearningRateMultiplier, [1, 2, 3]);
        Assert.Equal("valid_loss", sweep.ScoredBy);
        Assert.Equal(1, sweep.Best([(0, 2.5, null), (1, 2.0, null), (2, 2.0, null)]));
        Assert.Equal(2, sweep.Best([(0, double.NaN, null), (2, 3.0, null)]));
        Assert.Null(sweep.Best([]));
    }

    [Fact]
    public void ByAnEvalTheHighestScoreWinsThenTheLowerValidationLossThenTheFirstListed()
    {
        var sweep = new Sweep(Sweep.LearningRateMultiplier, [1, 2, 3], Criterion: "similar");
        Assert.Equal("eval_similar", sweep.ScoredBy);
        Assert.Equal(1, sweep.Best([(0, 1.0, 0.5), (1, 3.0, 0.75), (2, 2.0, 0.25)]));
        Assert.Equal(2, sweep.Best([(0, 1.0, 0.5), (1, 3.0, 0.75), (2, 2.0, 0.75)]));   // a tie: the lower validation loss
        Assert.Equal(1, sweep.Best([(0, null, 0.5), (1, null, 0.75), (2, null, 0.75)]));   // no validation file: the first listed
        Assert.Equal(2, sweep.Best([(0, 1.0, null), (2, 9.0, 0.0)]));   // an unscored member ranks after every scored one
        Assert.Equal(0, sweep.Best([(0, 1.0, null), (1, 2.0, null)]));   // none scored: the validation loss decides
    }

    [Fact]
    public void AMembersEvalScoreIsItsAdaptersAsAJobAloneWouldKeepIt()
    {
        var sweep = new Sweep(Sweep.LearningRateMultiplier, [1, 2], Criterion: "similar");
        var checkpoints = new[] { Point(0, 3, 0.8), Point(0, 6, 0.4), Point(0, 9, 0.8) };
        // Without keep_best the adapter is the last checkpoint's, even when an earlier one graded higher.
        Assert.Equal((0.6, "ftckpt-0-9"), Scored(sweep.EvalScoreOf(checkpoints[..2].Append(Point(0, 9, 0.6)), keepBest: false)));
        // With keep_best, the checkpoint with the highest grade (the latest of equals), as keep_best keeps for a job alone.
        Assert.Equal((0.8, "ftckpt-0-9"), Scored(sweep.EvalScoreOf(checkpoints, keepBest: true)));
        Assert.Equal((0.8, "ftckpt-0-3"), Scored(sweep.EvalScoreOf(checkpoints[..2], keepBest: true)));
        // A last checkpoint whose eval did not complete has no score: the member is unscored.
        Assert.Null(sweep.EvalScoreOf([Point(0, 3, 0.8), Point(0, 6, null)], keepBest: false).Score);
        Assert.Null(new Sweep(Sweep.LearningRateMultiplier, [1, 2]).EvalScoreOf(checkpoints, keepBest: false).Score);
    }

    static (double?, string?) Scored((double? Score, Checkpoint? Checkpoint) s) => (s.Score, s.Checkpoint?.Id);
}
