"""Dataset preparation (data.prepare) and the data root every dataset lives under."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def data_root():
    """$FCN_DATA_DIR if set (a relative one is taken from the repository), else <repo>/data."""
    return REPO / (os.environ.get('FCN_DATA_DIR') or 'data')
