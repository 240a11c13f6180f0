#!/usr/bin/env python3
"""Declare an FCN on a dataset of one's own: no code, no edit of the model table.

  new_model.py NAME --data DIR --from SOURCE [--stride 32|16|8|atonce] [--solver paper|adam]
               [--base-lr X[,X...]] [--max-iter N[,N...]] ...   then: make NAME

checks the dataset as `make data-check` does (data/check.py), then writes
models/user/NAME.json, the declaration every tool reads beside the reference table
(models/registry.py), and the prototxts of its stages NAME-fcn32s, NAME-fcn16s, NAME-fcn8s
(or NAME-fcn8s-atonce) under models/, through the generators every net goes through.
`make NAME` then checks the data, trains the stages in turn and scores the last; solve.py,
score.py and infer.py take the stage names like any model's. Declarations and their
folders are git-ignored (a .gitignore in each folder; `git add -f` to commit them).

SOURCE, what training starts from:
  vgg16, caffenet, googlenet  an ILSVRC classifier, carried into the FCN by surgery (`make`
                              makes the base weights from the downloaded classifier)
  toy-vgg16                   the demo's toy classifier (`make` trains it if absent)
  MODEL                       an FCN of the table, reference or declared (a declared NAME
                              means its last stage): its final weights runs/MODEL/final.caffemodel,
                              or the file --from-weights names, or with `--from-weights
                              released` the reference release's weights of MODEL (`make`
                              fetches them)
The body and its width are the source's. Layers whose shapes match are copied; score layers
for another class count are re-initialised (for the same count too, when the class names
differ); training prints what was copied, coerced and re-initialised.

Stages: from a classifier FCN-32s, then FCN-16s from it, then FCN-8s, down to --stride, as
the paper trains them; `atonce` is one FCN-8s stage with the scaled skips. From an FCN of
stride S the chain starts at S, never coarser: FCN-8s to FCN-8s is one stage.

Solver: `--solver paper` (default) takes the reference models' values for the body and
stride (models/specs.py: VGG16 SGD with momentum 0.99 on a summed loss, 1e-10, 1e-12, 1e-14;
CaffeNet and GoogLeNet their own); `--solver adam` the toy nets' (Adam on a loss averaged
over pixels, 3e-4), quicker on small datasets. Every value can be overridden, by one value
for every stage or one per stage, coarse to fine (--base-lr 1e-4,1e-5,1e-5).
"""

import argparse
import re
import sys

from fcn import declare
from fcn.errors import UsageError, run_command
from models import declared


def build_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('name', metavar='NAME',
                        help='the model name; its stages are NAME-fcn32s, ...')
    parser.add_argument('--data', required=True, metavar='DIR', help='the dataset folder')
    parser.add_argument('--classes', metavar='FILE',
                        help='the class list (default DIR/classes.txt)')
    parser.add_argument('--from', dest='source', required=True, metavar='SOURCE',
                        help='what training starts from: vgg16, caffenet, googlenet, '
                        'toy-vgg16, or a model (see above)')
    parser.add_argument('--from-weights', metavar='FILE|released',
                        help='the FCN source\'s weights, if not runs/SOURCE/final.caffemodel '
                        '("released": the reference release\'s)')
    parser.add_argument('--stride', default='8', choices=[*declare.STRIDES, 'atonce'],
                        help='the finest stride (default 8: FCN-32s -> 16s -> 8s)')
    parser.add_argument('--solver', default='paper', choices=['paper', 'adam'],
                        help='the solver recipe (default: the paper\'s for the body)')
    for option, kind in declare.SOLVER_OPTIONS.items():
        parser.add_argument('--' + option.replace('_', '-'), metavar=kind.__name__.upper(),
                            help=f'override {option} (one value, or one per stage)')
    parser.add_argument('--train-split', default='train', help='default: train')
    parser.add_argument('--val-split', default='val', help='default: val')
    parser.add_argument('--mean', metavar='B,G,R',
                        help='the mean subtracted (default: the training images\' mean)')
    parser.add_argument('--deploy-size', metavar='H,W',
                        help='deploy.prototxt\'s example input (default: the largest image)')
    parser.add_argument('--force', action='store_true',
                        help='declare NAME again; its former runs are moved aside')
    return parser


def main(argv=None):
    from data.check import check
    args = build_parser().parse_args(argv)
    for option, text in (('mean', args.mean), ('deploy_size', args.deploy_size)):
        count = 3 if option == 'mean' else 2
        if text is not None and (len(text.split(',')) != count or not all(
                re.fullmatch(r'[0-9.eE+-]+', part) for part in text.split(','))):
            raise UsageError(f'--{option.replace("_", "-")} {text}: give {count} numbers, '
                             f'comma-separated')
    previous = declare.check_name(args.name, args.force)
    if 'train' not in args.train_split:
        raise UsageError(f'--train-split {args.train_split}: the data layers shuffle only '
                         f'splits whose name contains "train"; rename the split file')

    def progress(done, total):
        print(f'check: {done}/{total} images', file=sys.stderr, flush=True)

    report = check(args.data, args.classes, (args.train_split, args.val_split), progress)
    if not report.ok:
        for line in report.lines():
            print(line)
        raise UsageError(f'the dataset {args.data} has {len(report.errors)} error(s): fix '
                         f'them first (make data-check DATA={args.data})')
    data = declare.declaration(args, report)
    path = declared.user_dir() / f'{args.name}.json'
    try:
        model = declared.from_dict(args.name, data, path)  # every value checked before writing
    except declared.DeclarationError as error:
        raise UsageError(error.reason) from None
    if previous is not None:
        declare.retire(previous, {stage.name for stage in model.stages})
    declare.write_model(model, data)
    for line in declare.describe(model, data, path):
        print(line)
    return 0


if __name__ == '__main__':
    run_command(main)
