"""Shared test set-up: quiet glog, and the solve/ scripts importable by their bare names."""
import os
import sys
from pathlib import Path

os.environ.setdefault('GLOG_minloglevel', '2')

REPO = Path(__file__).resolve().parent.parent
for path in (REPO, REPO / 'solve'):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
