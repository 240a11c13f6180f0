#!/usr/bin/env python3
"""Train an FCN model of the table (models/specs.py, models/user/) with Caffe's solver.

  solve.py MODEL [--cpu | --gpu N | --gpus 0,1,...] [--weights W] [--resume STATE|auto]
           [--init-from reference|final|best] [--steps N] [--test-every N] [--data-dir D]
  solve.py MODEL --plan     # what the run will do, as JSON; trains nothing

The solver comes from models/MODEL/solver.prototxt; the run is the reference's: as long
as its solve script ran (the table's `iterations`, not the solver's max_iter, which
Caffe's step() ignored) and scored every `test_every` iterations. Training starts from
what the table's `init` names: the final weights of the previous stage
(runs/<prev>/final.caffemodel), base weights made by surgery (weights/<name>.caffemodel),
or both nets of a late fusion at the snapshots the reference took; `--weights` overrides
it. A first convolution renamed for a wider input (NYUD colour-depth) is then filled from
conv1_1 when the weights hold conv1_1 but not it (base weights, named by the table or by
--weights), and every upsampling (Deconvolution) layer with bilinear kernels. Between steps
the val net, sharing the training net's weights, is scored; losses go to
runs/MODEL/train_log.csv, scores to val_log.json, and both to loss.png and mean_iu.png.

Snapshots (runs/MODEL/snapshots/) are atomic: Caffe writes them into a scratch folder,
they are checked, and only then moved into place. Ctrl-C or SIGTERM finishes the current
iteration, snapshots and exits; `--resume` continues from a snapshot at its iteration
(`--resume auto`: from the newest one, if any). Finished training leaves
runs/MODEL/final.caffemodel, the file the next stage and `make` look for.

With --gpus, one process per GPU trains through Caffe's NCCL support: the data layers
shard the training set by rank and rank 0 alone scores, logs and snapshots.
"""
import argparse
import json
from pathlib import Path

from fcn import nets
from fcn.errors import UsageError, run_command
from fcn.training import start


def build_parser():
    from fcn.runtime import devices
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', help='model name (models/specs.py or models/user/)')
    devices.add_device_args(parser, multi_gpu=True)
    parser.add_argument('--weights', type=Path, metavar='W',
                        help="start from these weights instead of the table's init")
    parser.add_argument('--resume', metavar='STATE|auto',
                        help='continue from a .solverstate (auto: the newest in the run '
                        'folder, else start fresh)')
    parser.add_argument('--init-from', choices=start.INIT_CHOICES, default='reference',
                        help="which weights of the previous nets training starts from: "
                        "reference (the table's: final weights, or the snapshots the "
                        "reference took, as for late fusion), final, or best (each net's "
                        "best-validated snapshot)")
    parser.add_argument('--iterations', type=int, metavar='N',
                        help="train to iteration N (default: the table's run length, what "
                        "the reference's script ran)")
    parser.add_argument('--steps', type=int, metavar='N',
                        help='run N iterations from where training starts or resumes')
    parser.add_argument('--test-every', type=int, metavar='N',
                        help="validate every N iterations (default: the table's, as the "
                        "reference's script; 0: never)")
    parser.add_argument('--snapshot-every', type=int, metavar='N',
                        help="snapshot every N iterations (default: as the solver says, "
                        "else at every validation)")
    parser.add_argument('--plan', action='store_true',
                        help='print what the run will do (run length, cadence, initial '
                        'weights, solver values) as JSON and exit; needs no data')
    parser.add_argument('--val-images', type=int, metavar='N',
                        help='validate on the first N val images only (default: all)')
    parser.add_argument('--keep-snapshots', type=int, default=0, metavar='N',
                        help='keep only the newest N snapshots (default: all)')
    parser.add_argument('--run-dir', type=Path, metavar='DIR',
                        help='outputs (default: runs/MODEL)')
    parser.add_argument('--data-dir', metavar='DIR',
                        help='data root (default: $FCN_DATA_DIR or data/)')
    return parser


def main(argv=None):
    from fcn.runtime import devices
    args = build_parser().parse_args(argv)
    for flag in ('iterations', 'steps', 'test_every', 'snapshot_every', 'val_images',
                 'keep_snapshots'):
        value = getattr(args, flag)
        if value is not None and value < (0 if flag in ('test_every', 'snapshot_every',
                                                        'keep_snapshots') else 1):
            raise UsageError(f'--{flag.replace("_", "-")} {value} is out of range')
    if args.resume not in (None, 'auto') and args.weights:
        raise UsageError('--resume and --weights exclude each other: a snapshot has weights')
    if args.plan:
        print(json.dumps(start.plan(args.model, args.weights, args.init_from,
                              iterations=args.iterations, steps=args.steps,
                              test_every=args.test_every,
                              snapshot_every=args.snapshot_every), indent=1))
        return 0
    nets.set_data_dir(args.data_dir)
    devices.select_device(args)
    training = start.training_run(args.model, args.run_dir, args.weights, args.resume,
                            args.init_from, iterations=args.iterations, steps=args.steps,
                            test_every=args.test_every,
                            snapshot_every=args.snapshot_every, val_images=args.val_images,
                            keep_snapshots=args.keep_snapshots)
    return start.launch(training, args.gpus)


if __name__ == '__main__':
    run_command(main)
