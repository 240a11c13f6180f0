#!/usr/bin/env python3
"""Score semantic segmentation the FCN way: one confusion matrix per label, then
pixel accuracy, mean accuracy, mean IU and frequency-weighted IU from it.

Three ways in:
  score.py MODEL --weights W [--split S]       forward the model's val net over a split
                                               (W: a .caffemodel, or `released` for the
                                               reference release's weights of MODEL,
                                               fetched if absent, scored into
                                               runs/released/MODEL/score.json)
  score.py --pred-dir P --gt-dir G --num-classes K   compare saved label PNGs
  score.py --merge A.npz B.npz ...             merge the histograms of sharded runs

`--shard i/n` scores the i-th of n contiguous blocks of the images and `--save-hist`
keeps its histogram, so one split can be scored on several machines and merged.

`--runtime opencv` (with --weights) or `--runtime onnxruntime --onnx FILE` computes the
scores on that runtime instead of Caffe (Caffe's data layers still read the split), so
that its mean IU can be set beside Caffe's; the report goes to score-RUNTIME.json.

Beside the report (score.json) go its per-image counts (score-images.npz: per image and
class the intersection, ground truth and prediction pixels, which give each image's pixel
accuracy and mean IU), merged from shards like the totals, and for MODEL the predictions
as palette PNGs (runs/MODEL/predictions/): what the results page (solve/page.py) shows.

MODEL's weights are checked before Caffe reads them: a file cut short or of another kind
is refused, and so are weights lacking layers of the model's val net (another model's)
unless --allow-missing-layers.

Missing classes: by default a class with neither ground truth nor predictions is left
out of the means, as the reference code computes; `--ignore-absent` (and every head the
model table marks so, e.g. SIFT Flow's semantic labels) also leaves out classes that
have predictions but no ground truth pixels, which the reference wrongly counted as 0.
"""
import argparse
from pathlib import Path

from fcn import evaluation, nets, runs, runtimes
from fcn.errors import run_command


def print_summary(document_results):
    for label, metrics in document_results.items():
        print(f'[{label}] images {metrics["n_images"]}')
        for key in evaluation.METRIC_KEYS[:4]:
            value = metrics[key]
            print(f'  {key:10s} {"n/a" if value is None else f"{100 * value:.2f}"}')
        for name, iu in metrics['per_class_iu'].items():
            print(f'    {name:24s} {"n/a" if iu is None else f"{100 * iu:.2f}"}')


def score_model(args):
    from fcn.runtime import devices
    spec = nets.model_spec(args.model)
    nets.set_data_dir(args.data_dir)
    devices.select_device(args)
    split = args.split or spec.val_split
    weights = None if args.weights is None else nets.weights_file(args.model, args.weights)
    runtime = runtimes.deploy_runtime(args.runtime, nets.model_file(args.model, 'deploy'),
                                      weights, args.onnx)
    # Another runtime computes the scores: Caffe's val net only reads the data.
    net = nets.load_net(nets.model_file(args.model, 'val'), weights if runtime is None else None,
                        data_updates={'split': args.split},
                        allow_missing_layers=args.allow_missing_layers)
    released = args.weights == nets.RELEASED
    folder = runs.released_folder(args.model) if released else runs.run_folder(args.model)
    # The predictions go beside the report: into the run folder unless --json says elsewhere.
    beside = folder if args.json is None else runs.RunFolder(args.json.parent, args.model)
    # Another runtime's predictions go only where --save-dir says: the run folder's are
    # Caffe's, which the results page shows.
    save_dir = args.save_dir or (None if runtime else
                                 beside.predictions(None if split == spec.val_split else split))
    ids = nets.split_ids(net)
    hists = evaluation.score_net(net, spec.heads, ids, args.shard, save_dir,
                                 label=f'score {args.model} {split}'
                                       + (f' ({args.runtime})' if runtime else ''),
                                 limit=args.images, runtime=runtime)
    names = {h.label: nets.class_names(spec, h) for h in spec.heads}
    ignore = {h.label: args.ignore_absent or h.ignore_absent for h in spec.heads}
    extra = {'model': args.model, 'weights': str(weights or args.onnx), 'split': split}
    if runtime is not None:
        extra['runtime'] = args.runtime
    if released:
        extra['released'] = True
    if args.images:
        extra['images'] = args.images
    if args.shard != (0, 1):
        extra['shard'] = f'{args.shard[0]}/{args.shard[1]}'
    shard = None if args.shard == (0, 1) else args.shard
    if released:
        # The released weights' score on the model's own split is what make and the
        # reproduction report read.
        default = folder.score() if (split, shard) == (spec.val_split, None) else \
            folder.score(split, shard)
    else:
        default = folder.score(split, shard)
    if args.runtime != 'caffe':
        default = default.with_name(f'{default.stem}-{args.runtime}{default.suffix}')
    return hists, names, ignore, extra, args.json or default


def build_parser():
    from fcn.runtime import devices
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('model', nargs='?', help='model name (models/specs.py or models/user/)')
    parser.add_argument('--weights', help='trained weights (.caffemodel), or "released" for '
                        "the reference release's weights of MODEL (fetched if absent)")
    parser.add_argument('--split', help="split to score (default: the model's val split)")
    parser.add_argument('--allow-missing-layers', action='store_true',
                        help="MODEL: score even if the weights lack some of the net's layers "
                        "(they keep what the prototxt fills them with, zeros for most); "
                        "without it such weights, another net's, are refused")
    parser.add_argument('--images', type=int, metavar='N',
                        help='score only the first N images of the split (a quick look)')
    parser.add_argument('--data-dir', help='data root (default: $FCN_DATA_DIR or data/)')
    parser.add_argument('--save-dir', type=Path, help='MODEL: write prediction PNGs (palette) '
                        'here (default: predictions/ beside the report, predictions-SPLIT/ for '
                        'another split; what the results page shows)')
    parser.add_argument('--pred-dir', type=Path, help='score saved prediction PNGs ...')
    parser.add_argument('--gt-dir', type=Path, help='... against the label PNGs here')
    parser.add_argument('--num-classes', type=int, help='class count for --pred-dir')
    parser.add_argument('--merge', nargs='+', type=Path, metavar='HIST',
                        help='merge histograms saved by --shard runs')
    parser.add_argument('--ignore-absent', action='store_true',
                        help='leave classes without ground truth pixels out of the means')
    parser.add_argument('--shard', type=evaluation.parse_shard, default=(0, 1), metavar='i/n',
                        help='score only the i-th of n blocks of the images')
    parser.add_argument('--save-hist', type=Path, metavar='NPZ',
                        help="save this run's histograms for --merge")
    parser.add_argument('--json', type=Path, help='write the report here (and the '
                        'confusion PNG next to it); MODEL default: runs/MODEL/score-SPLIT.json')
    runtimes.add_options(parser, 'MODEL: what computes the scores, written to '
                         'score-RUNTIME.json (Caffe reads the data in every case)')
    devices.add_device_args(parser)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    modes = [args.model is not None, args.pred_dir is not None, args.merge is not None]
    if sum(modes) != 1:
        parser.error('give exactly one of: MODEL, --pred-dir, --merge')
    if args.merge:
        hists, names, ignore = evaluation.merge_hists(args.merge)
        if args.ignore_absent:
            ignore = dict.fromkeys(ignore, True)
        extra, json_path = {'merged': [str(p) for p in args.merge]}, args.json
    elif args.pred_dir:
        if args.gt_dir is None or args.num_classes is None:
            parser.error('--pred-dir needs --gt-dir and --num-classes')
        hists = {'label': evaluation.score_pred_dir(args.pred_dir, args.gt_dir, args.num_classes,
                                         args.shard)}
        names = {'label': tuple(f'class {i}' for i in range(args.num_classes))}
        ignore = {'label': args.ignore_absent}
        extra, json_path = {'pred_dir': str(args.pred_dir)}, args.json
    else:
        problem = runtimes.option_problem(args)
        if problem:
            parser.error(problem)
        if args.images is not None and args.images < 1:
            parser.error(f'--images {args.images}: give at least 1')
        hists, names, ignore, extra, json_path = score_model(args)
    if args.save_hist:
        evaluation.save_hist(args.save_hist, hists, names, ignore, args.shard)
        print(f'histograms: {args.save_hist}')
    print_summary(evaluation.results(hists, names, ignore))
    if json_path is not None:
        evaluation.write_outputs(json_path, hists, names, ignore, extra)
        print(f'report: {json_path}')


if __name__ == '__main__':
    run_command(main)
