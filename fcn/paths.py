"""Where the project's files are: the repository, the model definitions, the data root,
training runs and the base weights training starts from. Only the standard library: the
orchestration that runs on the system python3 reads these too."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MODELS_DIR = REPO / 'models'
# Training runs, and the base weights (surgery's output) training starts from: the
# Makefile points both elsewhere for a short run (STEPS=N), so a full run never meets it.
# Relative paths are taken from the repository.
RUNS_DIR = REPO / os.environ.get('FCN_RUNS_DIR', 'runs')
WEIGHTS_DIR = REPO / os.environ.get('FCN_WEIGHTS_DIR', 'weights')


def data_root():
    """$FCN_DATA_DIR if set (a relative one is taken from the repository), else <repo>/data."""
    return REPO / (os.environ.get('FCN_DATA_DIR') or 'data')
