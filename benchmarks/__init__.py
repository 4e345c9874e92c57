"""Throughput benchmarks: each module prints a table and writes JSON (see docs/benchmarks.md)."""
