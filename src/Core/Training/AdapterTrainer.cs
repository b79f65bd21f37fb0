using System.Diagnostics;
using System.Text.Json;
using AdapterService.Core.Adapters;
using AdapterService.Core.Telemetry;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace AdapterService.Core.Training;

public sealed record Hyperparameters(int Epochs, int BatchSize, double LearningRate);

public sealed record TrainingProgress(
    int Step, int TotalSteps, int Epoch, double TrainLoss, double TrainAccuracy, double LearningRate, double TokensPerSecond, double EtaSeconds);

public sealed record TrainingResult(int Steps, long TrainedTokens, double FinalLoss);

/// <summary>
/// The training loop every adapter trainer shares, whatever the base (a language model, an image classifier): AdamW on
/// the adapter's parameters only, the method's auxiliary loss added, gradients clipped to norm 1, linear learning-rate
/// decay. Every step is a pure function of (seed, step) and the state saved by <see cref="SaveState"/>: the batch order
/// of an epoch and the dropout masks are seeded from them, so a job resumed from a saved state continues the same run.
/// Runs synchronously on the calling thread (TorchSharp dispose scopes are per thread).
/// </summary>
public abstract class AdapterTrainer : IDisposable
{
    const string StateFile = "trainer_state.json", OptimizerFile = "optimizer.bin";

    protected TrainableAdapter Adapter { get; }
    protected Hyperparameters Hp { get; }
    /// <summary>Draws the dropout masks of a step (seeded from the step).</summary>
    protected Generator Dropout { get; } = new();
    readonly long seed;
    readonly int examples;
    readonly List<Parameter> parameters;
    readonly AdamW optimizer;
    bool stopRequested;

    public int StepsPerEpoch { get; }
    public int TotalSteps { get; }
    /// <summary>Steps done so far.</summary>
    public int Step { get; private set; }
    public long TrainedTokens { get; private set; }
    public double LastLoss { get; private set; } = double.NaN;

    sealed record State(int Step, long TrainedTokens, double LastLoss);

    /// <param name="adapter">The adapter, attached to its model by the subclass.</param>
    /// <param name="examples">How many training examples there are.</param>
    /// <param name="hp">Epochs, batch size, learning rate.</param>
    /// <param name="seed">Seeds the batch order and the dropout masks.</param>
    /// <param name="parameters">What the optimizer trains (the adapter's parameters, or a linear probe's head).</param>
    protected AdapterTrainer(TrainableAdapter adapter, int examples, Hyperparameters hp, long seed, IEnumerable<Parameter> parameters)
    {
        if (examples == 0) throw new ArgumentException("no training examples", nameof(examples));
        (Adapter, Hp, this.seed, this.examples) = (adapter, hp, seed, examples);
        StepsPerEpoch = (int)Math.Ceiling(examples / (double)hp.BatchSize);
        TotalSteps = hp.Epochs * StepsPerEpoch;
        this.parameters = parameters.ToList();
        optimizer = optim.AdamW(this.parameters, hp.LearningRate, weight_decay: 0);
    }

    /// <summary>Ends <see cref="Run"/> after the step in progress, as finished (early stopping).</summary>
    public void StopAfterThisStep() => stopRequested = true;

    /// <summary>Whether every step is done or early stopping ended the run.</summary>
    public bool Finished => Step >= TotalSteps || stopRequested;

    /// <summary>What the run has reached so far.</summary>
    public TrainingResult Result => new(Step, TrainedTokens, LastLoss);

    /// <summary>Trains from <see cref="Step"/> to the end; <paramref name="onStep"/> runs after each step, outside its dispose scope.</summary>
    public TrainingResult Run(Action<TrainingProgress> onStep, CancellationToken cancel)
    {
        BeginRun();
        try
        {
            while (!Finished)
            {
                cancel.ThrowIfCancellationRequested();
                onStep(StepAlone());
            }
            return Result;
        }
        finally
        {
            EndRun();
        }
    }

    // The pieces of a run, public to this assembly so that a FusedTrainer can drive several trainers' steps over one
    // model: BeginRun, then per step BeginStep, the forward pass, StepLoss, the backward pass, OptimizerStep, EndStep.
    readonly Stopwatch clock = new();
    int firstStep, orderEpoch = -1;
    long tokensAtStart;
    List<int> order = [];

    /// <summary>Starts a run that something else steps (a fused run): training behaviour on (dropout from this trainer's generator), and the clock of tokens/s and the ETA started.</summary>
    public void BeginRun()
    {
        Adapter.Train(true, Dropout);
        (firstStep, tokensAtStart) = (Step, TrainedTokens);
        clock.Restart();
    }

    /// <summary>Training behaviour off (after <see cref="BeginRun"/>).</summary>
    public void EndRun() => Adapter.Train(false);

    /// <summary>The examples of step <see cref="Step"/>; sets its learning rate and seeds its dropout masks from (seed, step).</summary>
    internal IReadOnlyList<int> BeginStep()
    {
        int epoch = Step / StepsPerEpoch, index = Step % StepsPerEpoch;
        if (orderEpoch != epoch) (order, orderEpoch) = (EpochOrder(epoch), epoch);
        foreach (var group in optimizer.ParamGroups) group.LearningRate = LearningRate;
        Dropout.manual_seed(seed * 1_000_003 + Step);                                            // dropout masks depend on (seed, step) only
        optimizer.zero_grad();                                                                   // micro-batches add their gradients up
        return order.Skip(index * Hp.BatchSize).Take(Hp.BatchSize).ToList();
    }

    double LearningRate => Hp.LearningRate * (1 - Step / (double)TotalSteps);

    /// <summary>One whole step of this trainer alone (its model's slots hold its adapter).</summary>
    internal TrainingProgress StepAlone()
    {
        double accuracy;
        using (NewDisposeScope()) accuracy = TrainStep(BeginStep());                              // zeroing gradients may make tensors
        return EndStep(accuracy);
    }

    /// <summary>Counts the step done; its progress (tokens/s and ETA over this run so far).</summary>
    internal TrainingProgress EndStep(double accuracy)
    {
        double lr = LearningRate;
        int epoch = Step / StepsPerEpoch;
        Step++;
        double seconds = clock.Elapsed.TotalSeconds;
        return new TrainingProgress(Step, TotalSteps, epoch + 1, LastLoss, accuracy, lr,
            (TrainedTokens - tokensAtStart) / Math.Max(seconds, 1e-9), seconds / (Step - firstStep) * (TotalSteps - Step));
    }

    /// <summary>One optimizer step on the examples with these indices (inside the step's dispose scope); returns the accuracy on them.</summary>
    protected abstract double TrainStep(IReadOnlyList<int> batch);

    /// <summary>Back-propagates <paramref name="loss"/> plus the method's auxiliary loss and steps the optimizer.</summary>
    protected void Optimize(Tensor loss, long tokens)
    {
        Backward(loss);
        OptimizerStep(loss.item<float>(), tokens);
    }

    /// <summary>
    /// Back-propagates <paramref name="loss"/> plus <paramref name="auxiliaryWeight"/> times the method's auxiliary loss,
    /// adding to the gradients earlier micro-batches of this step left (the step starts with none).
    /// </summary>
    protected void Backward(Tensor loss, double auxiliaryWeight = 1) => StepLoss(loss, auxiliaryWeight).backward();

    /// <summary>
    /// The loss to back-propagate: <paramref name="loss"/> plus <paramref name="auxiliaryWeight"/> times the method's
    /// auxiliary loss. Throws <see cref="TrainingDivergedException"/> when it is not finite, before any weight changes:
    /// stepping on NaN would only turn the adapter into NaN.
    /// </summary>
    internal Tensor StepLoss(Tensor loss, double auxiliaryWeight = 1)
    {
        var auxiliary = Adapter.AuxiliaryLoss();
        var total = auxiliary is null ? loss : loss + auxiliaryWeight * auxiliary;
        if (!float.IsFinite(total.item<float>())) throw new TrainingDivergedException(Step + 1);
        return total;
    }

    /// <summary>Clips the step's accumulated gradients to norm 1 and steps the optimizer; <paramref name="loss"/> is the step's loss.</summary>
    protected internal void OptimizerStep(double loss, long tokens)
    {
        nn.utils.clip_grad_norm_(parameters, 1.0);
        optimizer.step();
        LastLoss = loss;
        TrainedTokens += tokens;
        ServiceTelemetry.TrainingTokens.Add(tokens);
        ServiceTelemetry.TrainingSteps.Add(1);
    }

    /// <summary>Runs <paramref name="evaluate"/> with training behaviour (dropout) off, then puts it back as it was.</summary>
    protected T WithoutTraining<T>(Func<T> evaluate)
    {
        bool wasTraining = Adapter.Layers.Values.FirstOrDefault()?.training ?? false;
        Adapter.Train(false);
        try
        {
            return evaluate();
        }
        finally
        {
            Adapter.Train(wasTraining, Dropout);
        }
    }

    List<int> EpochOrder(int epoch)
    {
        var random = new Random(unchecked((int)(seed * 7919 + epoch)));
        return Enumerable.Range(0, examples).OrderBy(_ => random.Next()).ToList();
    }

    /// <summary>Writes the adapter (PEFT layout), the optimizer's moments and the step into <paramref name="folder"/>.</summary>
    public void SaveState(string folder)
    {
        Adapter.Save(folder);
        optimizer.save_state_dict(Path.Combine(folder, OptimizerFile));
        File.WriteAllText(Path.Combine(folder, StateFile), JsonSerializer.Serialize(new State(Step, TrainedTokens, LastLoss)));
    }

    /// <summary>Continues from a folder <see cref="SaveState"/> wrote.</summary>
    public void LoadState(string folder)
    {
        var state = JsonSerializer.Deserialize<State>(File.ReadAllText(Path.Combine(folder, StateFile)))
                    ?? throw new InvalidDataException($"{StateFile} is empty");
        Adapter.LoadWeights(folder);
        optimizer.load_state_dict(Path.Combine(folder, OptimizerFile));
        (Step, TrainedTokens, LastLoss) = (state.Step, state.TrainedTokens, state.LastLoss);
        orderEpoch = -1;
    }

    public virtual void Dispose()
    {
        optimizer.Dispose();
        Dropout.Dispose();
    }
}

/// <summary>The training loss became NaN or infinite: the learning rate is too high for the data (or the data is broken).</summary>
public sealed class TrainingDivergedException(int step)
    : Exception($"The training loss is not finite (NaN or infinite) at step {step}: try a lower learning_rate_multiplier");
