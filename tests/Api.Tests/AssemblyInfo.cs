// These tests start real services, workers and training jobs; on a 2-core machine, running them side by side only
// makes each slower and their timings flaky, so they run one class at a time.
[assembly: CollectionBehavior(DisableTestParallelization = true)]
