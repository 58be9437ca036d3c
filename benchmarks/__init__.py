"""Benchmarks of dualenc against sentence-transformers; see benchmarks/README.md."""
