#!/usr/bin/env python3
"""The results page of every run: runs/page/index.html (`make page`).

For every run under the runs folder (runs/MODEL/ and runs/released/MODEL/): its four
metrics, per-class IU, training curves and confusion matrix (rows normalised), the
reproduction table, and its val images (image, ground truth, prediction, error map, each
image's mean IU and pixel accuracy), sortable, filterable by a class present, paginated,
with the runs of one split side by side; the class legend. The images are what scoring
saved beside score.json (score-images.npz, predictions/); whatever a run lacks is named on
the page with what to do. A static site: open it from file:// or any file server.
Thumbnails are rendered once and reused until their sources change.

  page.py [--runs-dir runs] [--out RUNS_DIR/page] [--data-dir D]
"""
import argparse
import time

from fcn import nets, reports
from fcn.errors import run_command
from fcn.reports import page


def main(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    reports.add_folder_options(parser, 'the runs to show',
                               'the page folder (default: RUNS_DIR/page)')
    args = parser.parse_args(argv)
    nets.set_data_dir(args.data_dir)
    started = time.perf_counter()
    index, data, counts = page.build(args.runs_dir, args.out)
    for run in data['runs']:
        for missing in run['missing']:
            print(f'{run["name"]}: missing {missing}')
    print(f'{len(data["runs"])} runs, {counts["rendered"]} pictures rendered, '
          f'{counts["reused"]} reused, {time.perf_counter() - started:.1f} s')
    print(f'page: {index}')


if __name__ == '__main__':
    run_command(main)
