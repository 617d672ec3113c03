"""Benchmarks: `make bench` (python -m bench.run). Figures and ratios, never pass/fail tests."""
