"""Training on a dataset of one's own: the dataset check and its errors, the data layer
that reads such a dataset, model declarations, the choices solve/new_model.py makes,
which layers fine-tuning re-initialises, and the whole path end to end through `make`."""
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import caffe
from caffe import layers as L
from data import check, toy
from layers.base import DataLayerError
from models import declared, generate
from models.specs import MODELS

from fcn import nets, paths, prototxt
from fcn import declare
from solve import new_model
from fcn import surgery

caffe.set_mode_cpu()

CLASSES = ('background', 'cat', 'dog')
# (height, width) of each example; the labels are drawn by `label_of`.
SHAPES = {'train': [(20, 30), (24, 17), (16, 16)], 'val': [(18, 22), (21, 9)]}


def label_of(height, width, index):
    """Class 1 on the top rows, 2 on the left columns of the rest, void on the last row."""
    label = np.zeros((height, width), np.uint8)
    label[:3 + index] = 1
    label[3 + index:, :4] = 2
    label[-1] = check.VOID
    return label


def image_of(height, width, index):
    return np.random.default_rng(index).integers(0, 256, (height, width, 3), dtype=np.uint8)


def write_dataset(root, layout='simple'):
    """A 3-class dataset in `layout`, lossless PNG images so that the test knows every
    pixel. Returns {split: [(id, image, label)]}."""
    folders = check.LAYOUTS[layout]
    for key in ('images', 'labels', 'splits'):
        (root / folders[key]).mkdir(parents=True, exist_ok=True)
    (root / 'classes.txt').write_text('\n'.join(CLASSES) + '\n')
    examples = {}
    for split, shapes in SHAPES.items():
        examples[split] = []
        for index, (height, width) in enumerate(shapes):
            image_id = f'{split}{index}'
            image, label = image_of(height, width, index), label_of(height, width, index)
            Image.fromarray(image).save(root / folders['images'] / f'{image_id}.png')
            Image.fromarray(label).save(root / folders['labels'] / f'{image_id}.png')
            examples[split].append((image_id, image, label))
        (root / folders['splits'] / f'{split}.txt').write_text(
            '\n'.join(i for i, _, _ in examples[split]) + '\n')
    return examples


# ---- the dataset check -------------------------------------------------------------

@pytest.mark.parametrize('layout', sorted(check.LAYOUTS))
def test_a_good_dataset_passes_with_its_frequencies_sizes_and_mean(tmp_path, layout, capsys):
    examples = write_dataset(tmp_path, layout)
    report = check.check(tmp_path)
    assert report.ok and report.layout == layout and report.classes == list(CLASSES)
    for split, items in examples.items():
        labels = np.concatenate([label.ravel() for _, _, label in items])
        expected = [(labels == k).sum() for k in range(3)]
        assert list(report.pixels[split]) == expected
        assert report.void[split] == sum(label.shape[1] for _, _, label in items)
    assert report.size_range() == {'height': [16, 24], 'width': [9, 30]}
    pixels = np.concatenate([image.reshape(-1, 3) for _, image, _ in examples['train']])
    np.testing.assert_allclose(report.mean_bgr(), pixels.mean(0)[::-1], atol=1e-3)

    assert check.main([str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert f'({layout} layout), 3 classes' in printed and 'ok: ready to train' in printed
    train = np.concatenate([label.ravel() for _, _, label in examples['train']])
    share = 100 * (train == 1).sum() / (train != check.VOID).sum()
    row, = [line.split() for line in printed.splitlines() if line.split()[:2] == ['1', 'cat']]
    assert row[2] == f'{share:.2f}'


def remove(path):
    path.unlink()


def garble(path):
    path.write_bytes(b'not an image')


def resize(path):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(path)


def out_of_range(path):
    label = np.array(Image.open(path))
    label[0, 0] = len(CLASSES)
    Image.fromarray(label).save(path)


def colour(path):
    Image.open(path).convert('RGB').save(path)


def empty(path):
    path.write_text('\n')


def duplicate(path):
    path.write_text(path.read_text() + 'train1\n')


def twice(path):
    path.write_text('background\ncat\ncat\n')


# what is broken: (the file that is broken and must be named, the damage)
BAD = {
    'missing image': ('images/train1.png', remove),  # named images/train1.*
    'unreadable image': ('images/val0.png', garble),
    'missing label': ('masks/train2.png', remove),
    'unreadable label': ('masks/train0.png', garble),
    'size mismatch': ('masks/val1.png', resize),
    'label value outside the classes': ('masks/train1.png', out_of_range),
    'colour label': ('masks/train0.png', colour),
    'empty split': ('val.txt', empty),
    'missing split': ('train.txt', remove),
    'id in two splits': ('val.txt', duplicate),
    'missing classes.txt': ('classes.txt', remove),
    'classes named twice': ('classes.txt', twice),
}


@pytest.mark.parametrize('case', sorted(BAD))
def test_a_bad_dataset_fails_naming_the_file_and_the_fix(tmp_path, capsys, case):
    write_dataset(tmp_path)
    name, damage = BAD[case]
    damage(tmp_path / name)
    assert check.main([str(tmp_path)]) == 1
    lines = capsys.readouterr().out.splitlines()
    errors = [index for index, line in enumerate(lines) if line.startswith('error: ')]
    if case == 'missing image':
        name = name.replace('.png', '.*')
    named = [index for index in errors if f'error: {tmp_path / name}: ' in lines[index]]
    assert named, f'{case}: no error names {name}:\n' + '\n'.join(lines)
    assert lines[named[0] + 1].startswith('  fix: ')
    assert lines[-1].endswith('error(s): fix them and check again')


def test_a_folder_in_neither_layout_is_named(tmp_path, capsys):
    write_dataset(tmp_path)
    (tmp_path / 'images').rename(tmp_path / 'pictures')
    assert check.main([str(tmp_path)]) == 1
    assert f'error: {tmp_path}: has neither layout' in capsys.readouterr().out


# ---- the toy set in the user-facing format ------------------------------------------

SMALL_TOY = dict(seg_train=6, seg_val=3, cls_train=0, cls_val=0, seg_size=64,
                 min_radius=6.0, max_radius=28.0)


@pytest.mark.parametrize('layout', sorted(check.LAYOUTS))
def test_the_toy_generator_writes_a_k_class_dataset_the_check_passes(tmp_path, layout):
    meta = toy.generate(tmp_path / 'toy3', classes=2, layout=layout, **SMALL_TOY)
    assert meta['classes'] == ['background', 'red', 'yellow']
    report = check.check(tmp_path / 'toy3')
    assert report.ok and report.layout == layout and report.classes == meta['classes']
    assert report.pixels['train'][1] > 0 and report.pixels['train'][2] > 0
    assert not (tmp_path / 'toy3' / 'classification').exists()
    # The demo's own set is in the same format (all five hues).
    toy.generate(tmp_path / 'toy', **{**SMALL_TOY, 'cls_train': 2, 'cls_val': 1})
    assert check.check(tmp_path / 'toy').classes == list(toy.CLASS_NAMES)


# ---- the data layer -------------------------------------------------------------------

def folder_net(tmp_path, root, split, classes=len(CLASSES), mean=(10.0, 20.0, 30.0)):
    n = caffe.NetSpec()
    params = dict(data_dir=str(root), layout='simple', classes=classes, split=split,
                  mean=list(mean), randomize=False)
    n.data, n.label = L.Python(module='layers.folder', layer='FolderSegDataLayer',
                               param_str=json.dumps(params), ntop=2)
    path = tmp_path / f'{split}.prototxt'
    path.write_text(str(n.to_proto()))
    return caffe.Net(str(path), caffe.TEST)


def test_the_folder_layer_feeds_what_the_check_read(tmp_path):
    root = tmp_path / 'set'
    examples = write_dataset(root)
    grey = np.arange(18 * 22, dtype=np.uint8).reshape(18, 22)
    Image.fromarray(grey).save(root / 'images' / 'val0.png')  # grey images are read as RGB
    net = folder_net(tmp_path, root, 'val')
    for index, (_, image, label) in enumerate(examples['val']):
        net.forward()
        rgb = np.stack([grey] * 3, axis=-1) if index == 0 else image
        expected = rgb[:, :, ::-1].astype(np.float32) - np.array([10, 20, 30], np.float32)
        np.testing.assert_array_equal(net.blobs['data'].data[0],
                                      expected.transpose(2, 0, 1))
        np.testing.assert_array_equal(net.blobs['label'].data[0, 0], label)
    out_of_range((root / 'masks' / 'train0.png'))
    with pytest.raises(DataLayerError, match='masks/train0.png: label values 3'):
        folder_net(tmp_path, root, 'train')


# ---- declarations ---------------------------------------------------------------------

def declaration(**changes):
    stage = dict(name='mine-fcn32s', stride=32, init='vgg16-fcn', skip_scales=[],
                 fresh_scores=False, solver_type='SGD', normalize_loss=False, base_lr=1e-10,
                 momentum=0.99, iter_size=1, max_iter=100, snapshot=50, test_every=50)
    return {'format': 1, 'data': 'mine', 'layout': 'voc', 'classes': list(CLASSES),
            'train_split': 'train', 'val_split': 'val', 'val_size': 2, 'mean': [1, 2, 3],
            'deploy_size': [40, 50], 'body': 'vgg16', 'width': 0.125, 'fc6_kernel': 7,
            'source': 'vgg16', 'stages': [stage], **changes}


def test_a_declaration_becomes_model_specs_and_prototxts(tmp_path):
    (tmp_path / 'mine.json').write_text(json.dumps(declaration()))
    (model,), problems = declared.read_all(tmp_path, taken=set(MODELS))
    assert problems == ()
    spec, = model.stages
    assert (spec.name, spec.stride, spec.init, spec.base_lr, spec.width) == (
        'mine-fcn32s', 32, 'vgg16-fcn', 1e-10, 0.125)
    assert spec.heads[0].num_classes == 3 and spec.heads[0].class_names == CLASSES
    assert nets.class_names(spec, spec.heads[0]) == CLASSES
    files = generate.render(spec, 'models/user/mine.json')
    assert set(files) == {f'mine-fcn32s/{kind}.prototxt'
                          for kind in ('train', 'val', 'deploy', 'solver')}
    assert files['mine-fcn32s/train.prototxt'].startswith(
        '# models/mine-fcn32s/train.prototxt: generated by `make models` from '
        'models/user/mine.json.')
    train = files['mine-fcn32s/train.prototxt']
    assert 'layers.folder' in train and '\\"classes\\": 3' in train
    assert 'base_lr: 1e-10' in files['mine-fcn32s/solver.prototxt']


@pytest.mark.parametrize('changes,message', [
    (dict(colour='red'), "unknown key 'colour'"),
    (dict(body='resnet'), "'body' must be"),
    (dict(classes=['background']), "'classes' must be"),
    (dict(stages=[{}]), r"stages\[0\]: missing key 'name'"),
])
def test_a_bad_declaration_names_its_file_and_key(tmp_path, changes, message):
    data = declaration(**changes)
    if 'colour' in changes:
        data['colour'] = 'red'
    path = tmp_path / 'mine.json'
    path.write_text(json.dumps(data))
    with pytest.raises(declared.DeclarationError, match=message) as error:
        declared.read(path)
    assert str(path) in str(error.value)
    # Among others it is a problem, not an error: the good declaration is still read.
    (tmp_path / 'good.json').write_text(json.dumps(declaration()))
    (model,), (problem,) = declared.read_all(tmp_path)
    assert model.name == 'good' and problem.path == path
    assert re.search(message, problem.reason) and str(path) in str(problem)


def test_a_declared_name_may_not_take_a_models(tmp_path):
    stage = dict(declaration()['stages'][0], name='voc-fcn32s')
    (tmp_path / 'mine.json').write_text(json.dumps(declaration(stages=[stage])))
    models, (problem,) = declared.read_all(tmp_path, taken=set(MODELS))
    assert models == () and problem.path == tmp_path / 'mine.json'
    assert "'voc-fcn32s' is taken by models/specs.py" in problem.reason
    assert 'voc-fcn32s' not in problem.names and 'mine-fcn32s' in problem.names


# ---- what new_model.py chooses -----------------------------------------------------------

def test_the_chain_is_never_coarser_than_the_source():
    assert declare.stage_keys('8', None) == ['32', '16', '8']      # from a classifier
    assert declare.stage_keys('16', None) == ['32', '16']
    assert declare.stage_keys('8', 8) == ['8']                     # FCN-8s to FCN-8s
    assert declare.stage_keys('8', 32) == ['32', '16', '8']
    assert declare.stage_keys('8', 16) == ['16', '8']
    assert declare.stage_keys('32', 8) == ['32']
    assert declare.stage_keys('atonce', None) == ['atonce']


def plan(*argv, body='vgg16', keys=('32', '16', '8'), fresh=False):
    args = new_model.build_parser().parse_args(
        ['mine', '--data', 'd', '--from', 'vgg16', *argv])
    return declare.stages(args, body, list(keys), 'vgg16-fcn', fresh)


def test_solver_defaults_are_the_papers_and_every_value_can_be_overridden():
    # The reference release's VGG16 solvers (FCN-32s, 16s, 8s): SGD, momentum 0.99, a
    # summed loss, each finer stride 100 times slower.
    paper = plan()
    assert [(s['base_lr'], s['momentum'], s['solver_type'], s['normalize_loss'])
            for s in paper] == [(1e-10, 0.99, 'SGD', False), (1e-12, 0.99, 'SGD', False),
                                (1e-14, 0.99, 'SGD', False)]
    # The reference scripts ran 25 x 4000 iterations a stage, scoring every 4000.
    assert {(s['max_iter'], s['test_every'], s['snapshot']) for s in paper} == {
        (100000, 4000, 4000)}
    assert [s['init'] for s in paper] == ['vgg16-fcn', 'mine-fcn32s', 'mine-fcn16s']
    alexnet, = plan(body='alexnet', keys=['32'])
    assert (alexnet['base_lr'], alexnet['momentum'], alexnet['iter_size'],
            alexnet['normalize_loss']) == (1e-4, 0.9, 20, True)
    adam = plan('--solver', 'adam', '--max-iter', '100,50,20', '--base-lr', '1e-4',
                '--normalize-loss', 'false')
    assert [(s['solver_type'], s['base_lr'], s['max_iter'], s['normalize_loss'])
            for s in adam] == [('Adam', 1e-4, 100, False), ('Adam', 1e-4, 50, False),
                               ('Adam', 1e-4, 20, False)]
    atonce, = plan(keys=['atonce'])
    assert (atonce['stride'], atonce['skip_scales'], atonce['base_lr'], atonce['max_iter']) == (
        8, [0.01, 0.0001], 1e-10, 300000)
    assert [s['fresh_scores'] for s in plan(fresh=True)] == [True, False, False]
    with pytest.raises(nets.UsageError, match='one per stage'):
        plan('--max-iter', '1,2')
    with pytest.raises(nets.UsageError, match='FCN-32s only'):
        plan(body='googlenet')


def test_sources_resolve_to_what_training_starts_from():
    assert declare.resolve_source('vgg16', None)[1:] == ('vgg16-fcn', None, None)
    spec, init, stride, names = declare.resolve_source('voc-fcn8s', None)
    assert (spec.name, init, stride, names[:2]) == ('voc-fcn8s', 'voc-fcn8s', 8,
                                                    ('background', 'aeroplane'))
    _, init, _, _ = declare.resolve_source('voc-fcn8s', '/elsewhere/fcn8s.caffemodel')
    assert init == '/elsewhere/fcn8s.caffemodel'
    # The reference release's weights: the file `make` fetches (models/weights.py).
    _, init, _, _ = declare.resolve_source('voc-fcn8s', 'released')
    assert init == 'weights/released/fcn8s-heavy-pascal.caffemodel'
    with pytest.raises(nets.UsageError, match='no released weights'):
        declare.resolve_source('voc-fcn-googlenet', 'released')
    with pytest.raises(nets.UsageError, match='color \\+ hha inputs'):
        declare.resolve_source('nyud-fcn32s-color-hha', None)
    with pytest.raises(nets.UsageError, match='neither a classifier'):
        declare.resolve_source('no-such-net', None)
    # every classifier's base weights have a Makefile rule
    makefile = (paths.REPO / 'Makefile').read_text()
    for weights in declare.CLASSIFIER_BASE_WEIGHTS.values():
        assert f'\n$(BASE_WEIGHTS)/{weights}.caffemodel:' in makefile


# ---- which layers fine-tuning re-initialises ---------------------------------------------

def param_shapes(spec, tmp_path):
    net_param = generate.BUILDERS[spec.body, spec.task](spec, 'deploy')
    with prototxt.temporary_prototxt(net_param, tmp_path) as path:
        net = caffe.Net(path, caffe.TEST)
    return {name: [tuple(b.data.shape) for b in blobs] for name, blobs in net.params.items()}


@pytest.mark.parametrize('name', ['toy-fcn32s', 'toy-fcn16s', 'toy-fcn8s', 'voc-fcn8s-atonce',
                                  'voc-fcn-alexnet', 'voc-fcn-googlenet', 'siftflow-fcn8s'])
def test_score_layers_are_exactly_those_shaped_by_the_class_count(name, tmp_path):
    """The oracle: build the net for K and for K + 1 classes; the layers whose shapes
    change are the ones fine-tuning to other classes re-initialises."""
    spec = dataclasses.replace(MODELS[name], width=min(MODELS[name].width, 1 / 16),
                               deploy_size=(40, 40))

    def with_classes(extra):
        return dataclasses.replace(spec, heads=tuple(
            dataclasses.replace(head, num_classes=head.num_classes + extra)
            for head in spec.heads))

    before, after = param_shapes(with_classes(0), tmp_path), param_shapes(with_classes(1),
                                                                           tmp_path)
    changed = {layer for layer in before if before[layer] != after[layer]}
    assert changed and changed == {layer for layer in before if surgery.is_score_layer(layer)}


# ---- end to end: check, declare, `make NAME`, score, infer, fine-tune to K = 4 ------------

def checkout_copy(destination):
    """The repository's files (tracked and new, not ignored) copied with their times, as a
    fresh clone has them; the virtualenv is this one's."""
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                           cwd=paths.REPO, capture_output=True, check=True).stdout
    for name in filter(None, files.decode().split('\0')):
        source = paths.REPO / name
        if source.is_file():
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


@pytest.fixture(scope='module')
def clone(tmp_path_factory):
    return checkout_copy(tmp_path_factory.mktemp('clone'))


def run(clone, *command, ok=True):
    env = {key: value for key, value in os.environ.items()
           if key not in ('FCN_DATA_DIR', 'MAKEFLAGS', 'MAKELEVEL', 'MFLAGS')}
    # One thread: these nets are too small to share, and OpenMP's spinning threads only
    # slow each other down on a busy machine.
    env.update(PYTHONPATH=str(clone), GLOG_minloglevel='2', OMP_NUM_THREADS='1')
    if command[0] == 'make':
        # This virtualenv, taken as it is: never re-made in the copy (which would point
        # its path file at the copy).
        command = (*command, f'VENV={sys.prefix}',
                   '-o', f'{sys.prefix}/.requirements-installed')
    elif command[0].endswith('.py'):
        command = (sys.executable, *command)
    done = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True)
    assert (done.returncode == 0) == ok, \
        f'{command}: exit {done.returncode}\n{done.stdout}\n{done.stderr}'
    return done.stdout if ok else done.stdout + done.stderr


def toy_set(clone, name, classes, layout):
    run(clone, 'data/toy.py', '--out', f'data/{name}', '--classes', str(classes),
        '--layout', layout, *(f'--{key.replace("_", "-")}={value}'
                              for key, value in SMALL_TOY.items()))


def test_own_data_end_to_end(clone):
    """The README's commands on a fresh copy: K = 3 through FCN-32s, 16s and 8s from the
    toy classifier, scored and applied to an image; then a K = 4 dataset fine-tuned from it
    in one FCN-8s stage. Two iterations a stage: this tests the path, not what it learns."""
    specs_before = (clone / 'models/specs.py').read_bytes()
    # The toy classifier as `make` would leave it, its weights Caffe's random fillers (a
    # stand-in for VGG16), and a small toy set as the stamp of its data.
    run(clone, 'data/toy.py', '--seg-train=1', '--seg-val=1', '--cls-train=1', '--cls-val=1')
    classifier = caffe.Net(str(clone / 'models/toy-vgg16/deploy.prototxt'), caffe.TEST)
    (clone / 'runs/toy-vgg16').mkdir(parents=True)
    classifier.save(str(clone / 'runs/toy-vgg16/final.caffemodel'))

    toy_set(clone, 'toy3', 2, 'simple')
    printed = run(clone, 'make', 'data-check', 'DATA=data/toy3')
    assert '(simple layout), 3 classes' in printed and 'ok: ready to train' in printed
    short = ('--solver', 'adam', '--max-iter', '2', '--snapshot', '2', '--test-every', '2')
    printed = run(clone, 'solve/new_model.py', 'toy3', '--data', 'data/toy3', '--from',
                  'toy-vgg16', *short)
    assert 'next: make toy3' in printed
    assert json.loads((clone / 'models/user/toy3.json').read_text())['data'] == 'toy3'
    printed = run(clone, 'make', 'toy3')
    assert 'coerced (2): fc6, fc7' in printed  # surgery: classifier -> FCN base weights
    assert '[toy3-fcn32s]   left as initialised (2): score_fr, upscore' in printed
    assert '[toy3-fcn8s]   copied (18): ' in printed
    for stage in ('toy3-fcn32s', 'toy3-fcn16s', 'toy3-fcn8s'):
        validation, = json.loads((clone / 'runs' / stage / 'val_log.json').read_text())
        assert validation['iteration'] == 2 and validation['label']['n_images'] == 3
    score = json.loads((clone / 'runs/toy3-fcn8s/score.json').read_text())
    assert score['class_names'] == ['background', 'red', 'yellow']
    assert score['n_images'] == 3 and 0 <= score['mean_iu'] <= 1
    assert (clone / 'runs/toy3/data-check.json').is_file()
    assert run(clone, 'make', 'toy3').count('solve.py') == 0  # finished: nothing redone

    image = clone / 'data/toy3/images/val_00001.jpg'
    run(clone, 'solve/infer.py', 'toy3-fcn8s', '--weights', 'runs/toy3-fcn8s/final.caffemodel',
        str(image), '--out', 'runs/infer', '--cpu')
    pred = np.array(Image.open(clone / 'runs/infer/val_00001.png'))
    assert pred.shape == (64, 64) and pred.max() < 3

    toy_set(clone, 'toy4', 3, 'voc')
    printed = run(clone, 'solve/new_model.py', 'toy4', '--data', 'data/toy4', '--from', 'toy3',
                  *short)
    assert 'toy4-fcn8s' in printed and 'toy4-fcn32s' not in printed
    printed = run(clone, 'make', 'toy4')
    assert ('re-initialised for the classes (6): score_fr, upscore2, score_pool4, '
            'upscore_pool4, score_pool3, upscore8') in printed
    score = json.loads((clone / 'runs/toy4-fcn8s/score.json').read_text())
    assert score['class_names'] == ['background', 'red', 'yellow', 'green']
    assert (clone / 'models/specs.py').read_bytes() == specs_before

    # A name is declared once; --force declares it again and moves its runs aside.
    again = ('solve/new_model.py', 'toy4', '--data', 'data/toy4', '--from', 'toy3')
    assert 'give --force' in run(clone, *again, ok=False)
    assert 'moved ' in run(clone, *again, '--force')
    assert not (clone / 'runs/toy4-fcn8s').exists()
    assert len(list((clone / 'runs').glob('toy4-fcn8s.replaced-*/final.caffemodel'))) == 1

    # A broken dataset stops `make data-check` with the file named.
    label = clone / 'data/toy4/SegmentationClass/train_00002.png'
    Image.fromarray(np.full((64, 64), 7, np.uint8)).save(label)
    printed = run(clone, 'make', 'data-check', 'DATA=data/toy4', ok=False)
    assert f'error: {label.relative_to(clone)}: label values 7 are outside' in printed
