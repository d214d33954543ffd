"""Benchmarks against baselines measured in the same run. Run from the repository root as modules,
e.g. `python -m bench.bench_single_stream`, so they import the project (and tests' server helper) as it is."""
