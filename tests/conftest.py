"""Shared test set-up: the solve/ scripts importable by their bare names, and Caffe's
environment (quiet glog) set as the tools set it."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / 'solve'):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import caffe_env  # noqa: E402,F401  (before any test module imports caffe)
