"""A training run: the trainer (solver, snapshots, stop handling, logs), what a run starts
from (start), and one process per GPU (multigpu)."""
