#!/usr/bin/env python3
"""The reproduction table: for every FCN of the model table, the mean IU its paper or the
reference README reports (models/weights.py), the released weights' score here
(runs/released/MODEL/score.json, from `make eval-MODEL`) and the score of your own trained
run (runs/MODEL/score.json, from `make MODEL`), so that what reproduced and what did not
shows at a glance.

  report.py [--out DIR]

Writes DIR/reproduction.md (the Markdown table and a line per released model) and
DIR/reproduction.png (the three scores of every model as bars), and prints the Markdown.
Default DIR: runs/report. A model with two heads (SIFT Flow) is reported by its first,
the semantic classes, scored without the classes its test set lacks (models/README.md);
every score here is on the model's evaluation split of the model table, which the table
shows beside the published one's.
"""
import argparse
from pathlib import Path

from fcn import paths, pictures
from fcn.errors import run_command
from fcn.reports import reproduction

def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--out', type=Path, help='output folder (default runs/report)')
    args = parser.parse_args(argv)
    out = args.out or paths.RUNS_DIR / 'report'
    rows = reproduction.gather()
    text = reproduction.markdown(rows)
    pictures.atomic_save(out / 'reproduction.md', lambda tmp: Path(tmp).write_text(text))
    reproduction.plot(out / 'reproduction.png', rows)
    print(text)
    print(f'wrote {out / "reproduction.md"} and {out / "reproduction.png"}')


if __name__ == '__main__':
    run_command(main)
