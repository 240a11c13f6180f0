"""Caffe against PyTorch on the CPU: `python -m bench --help` (issue 7, BENCHMARKS.md)."""
