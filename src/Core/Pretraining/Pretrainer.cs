using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace AdapterService.Core.Pretraining;

/// <summary>
/// One pre-training step's numbers: the batch's loss and accuracy (of the class, or of the next token), the validation
/// loss and accuracy when they were measured at this step, and throughput in items (images or tokens) per second.
/// </summary>
public sealed record PretrainingProgress(
    int Step, int TotalSteps, double Loss, double Accuracy, double LearningRate, double ItemsPerSecond, double EtaSeconds,
    double? ValidLoss = null, double? ValidAccuracy = null);

/// <summary>How a model is pre-trained: steps, peak learning rate, AdamW's weight decay, and how often it is validated.</summary>
public sealed record PretrainingSchedule(int Steps, double LearningRate, double WeightDecay, int ValidateEverySteps = 0)
{
    /// <summary>Linear warm-up over the first 5% of steps, then linear decay to zero at the last step.</summary>
    public double LearningRateAt(int step)
    {
        int warmup = Math.Max(1, Steps / 20);
        return LearningRate * Math.Min((step + 1.0) / warmup, (Steps - step) / (double)(Steps - warmup + 1));
    }

    /// <summary>Whether the validation set is measured after <paramref name="step"/> (1-based): every N steps and after the last.</summary>
    public bool ValidatesAfter(int step) => step == Steps || ValidateEverySteps > 0 && step % ValidateEverySteps == 0;
}

/// <summary>
/// The pre-training loop shared by the built-in models: every weight trained from its random start with AdamW, the
/// schedule's warm-up and decay, gradients clipped to norm 1, and progress (with validation where the schedule says)
/// after every step. The caller says what a step's batch and loss are.
/// </summary>
public static class Pretrainer
{
    /// <summary>A step's loss (to minimise) and accuracy (reported) on batch <c>step</c>, and how many items it held.</summary>
    public delegate (Tensor Loss, Tensor Accuracy, int Items) BatchLoss(int step);

    /// <summary>Trains <paramref name="model"/> in place and returns the last step's progress; leaves it frozen in eval mode.</summary>
    public static PretrainingProgress Run(
        nn.Module model, PretrainingSchedule schedule, BatchLoss batchLoss, Func<(double Loss, double Accuracy)>? validate,
        Action<PretrainingProgress>? progress, CancellationToken cancel)
    {
        var clock = Stopwatch.StartNew();
        foreach (var p in model.parameters()) p.requires_grad = true;
        model.train();
        using var optimizer = optim.AdamW(model.parameters(), schedule.LearningRate, weight_decay: schedule.WeightDecay);
        PretrainingProgress? last = null;
        long items = 0;
        try
        {
            for (int step = 0; step < schedule.Steps; step++)
            {
                cancel.ThrowIfCancellationRequested();
                double lr = schedule.LearningRateAt(step);
                foreach (var group in optimizer.ParamGroups) group.LearningRate = lr;
                double loss, accuracy;
                using (NewDisposeScope())
                {
                    var (batch, batchAccuracy, count) = batchLoss(step);
                    optimizer.zero_grad();
                    batch.backward();
                    nn.utils.clip_grad_norm_(model.parameters(), 1.0);
                    optimizer.step();
                    (loss, accuracy) = (batch.item<float>(), batchAccuracy.item<float>());
                    items += count;
                }
                (double Loss, double Accuracy)? valid = null;
                if (validate is not null && schedule.ValidatesAfter(step + 1))
                {
                    model.eval();
                    using (no_grad()) valid = validate();
                    model.train();
                }
                double seconds = clock.Elapsed.TotalSeconds;
                last = new PretrainingProgress(step + 1, schedule.Steps, loss, accuracy, lr, items / seconds, seconds / (step + 1) * (schedule.Steps - step - 1),
                    valid?.Loss, valid?.Accuracy);
                progress?.Invoke(last);
            }
        }
        finally
        {
            foreach (var p in model.parameters()) p.requires_grad = false;
            model.eval();
        }
        return last ?? throw new ArgumentException("pre-training needs at least one step");
    }
}
