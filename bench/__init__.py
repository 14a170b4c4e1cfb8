"""Benchmarks: each starts the real processes and prints figures as ratios to a reference."""
