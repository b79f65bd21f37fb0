using AdapterService.Core.Pretraining;

namespace AdapterService.Core.Tests.Pretraining;

public class PretrainingScheduleTests
{
    [Fact]
    public void WarmsUpOverFivePercentThenDecaysLinearlyToTheEnd()
    {
        var schedule = new PretrainingSchedule(Steps: 200, LearningRate: 1e-3, WeightDecay: 0.1, ValidateEverySteps: 50);
        var rates = Enumerable.Range(0, 200).Select(schedule.LearningRateAt).ToList();
        Assert.Equal(1e-3 / 10, rates[0], 12);           // warm-up: 10 steps
        Assert.Equal(1e-3, rates[9], 12);                // peak at the end of warm-up
        Assert.Equal(rates.Max(), rates[9]);
        Assert.True(rates.Skip(9).Zip(rates.Skip(10)).All(p => p.First > p.Second), "decays every step after warm-up");
        Assert.Equal(1e-3 / 191, rates[^1], 12);         // one step's worth before zero
        Assert.Equal([50, 100, 150, 200], Enumerable.Range(1, 200).Where(schedule.ValidatesAfter));
        Assert.Equal([7], Enumerable.Range(1, 7).Where(new PretrainingSchedule(7, 1, 0).ValidatesAfter));
    }
}
