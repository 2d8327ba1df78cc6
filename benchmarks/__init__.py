"""Benchmarks for para-attn-server: ``python -m benchmarks --help``."""
