"""Benchmarks of lightning-gait, run from the repository root (``benchmarks/README.md``).

* ``python -m benchmarks.bench``: step time of GAIT-prop against backprop, side by side,
  and the split of a step into its profiler ranges;
* ``python -m benchmarks.bench_floor``: the floor of the GAIT/backprop step ratio;
* ``python -m benchmarks.callbacks_overhead``: training with and without the diagnostics
  callbacks;
* ``python -m benchmarks.data_loading``, ``python -m benchmarks.inverse_accuracy``: the
  DataModule's epoch time, the cached inverse's update error.
"""
