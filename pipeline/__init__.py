"""Orchestration that runs on the system python3, before or without the virtualenv: the
make rules of the pipeline (make_rules), SLURM submission (slurm, slurm-job.sh) and the
container's entry point (container). Standard library only (tests/test_layout.py)."""
