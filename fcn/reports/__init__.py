"""Reports gathered from run folders: the demo's (demo), the reproduction table
(reproduction) and the results page of every run (page, its static files in page_site/)."""
from pathlib import Path

from fcn import paths


def add_folder_options(parser, runs_help, out_help):
    """The options the report commands share: the runs they read (--runs-dir), the folder
    they write (--out) and the data root (--data-dir)."""
    parser.add_argument('--runs-dir', type=Path, default=paths.RUNS_DIR,
                        help=f'{runs_help} (default: runs/)')
    parser.add_argument('--out', type=Path, help=out_help)
    parser.add_argument('--data-dir', help='data root (default: $FCN_DATA_DIR or data/)')
