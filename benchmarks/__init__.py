"""dinoflow benchmarks: ``python -m benchmarks.bench_<name>`` (ours vs a baseline in the same run)."""
