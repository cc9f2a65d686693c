"""Measurement and experiment harnesses: each times something or reproduces a table of
BENCHMARK_RECORDS.md. What a user runs to train, evaluate and use a model stays in launch/."""
