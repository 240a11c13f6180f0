"""The results page in a real browser (Debian's Chromium, headless; `make test-browser`
installs it): built from made-up runs of one split (checks/page_runs.py) plus a run
without a score, a score without per-image counts and an image gone, loaded from file://
and from a local http.server. Every image loads, sorting by mean IU puts the worst image
first, the class filter keeps only images of that class, a row shows the image in each
run, and the console stays silent."""
import json
import socket
import subprocess
import sys
import time
from urllib.parse import quote

import pytest

import browser
from checks import page_runs
from fcn import runs
from fcn.reports import page

MODELS = ['toy-fcn32s', 'toy-fcn16s', 'toy-fcn8s']
IMAGES = 45  # three pages of the gallery


@pytest.fixture(scope='module')
def site(tmp_path_factory):
    reason = browser.install()
    if reason:
        pytest.skip(reason)
    root = tmp_path_factory.mktemp('page')
    data, runs_dir = page_runs.write_fixture(root, MODELS, IMAGES, (64, 48))
    (runs_dir / 'toy-fcn8s-unscored').mkdir()
    (runs_dir / 'toy-fcn8s-unscored' / runs.TRAIN_LOG).write_text('iteration,loss\n1,2.0\n')
    # a release scored before per-image counts were kept
    old = runs_dir / runs.RELEASED / 'toy-fcn8s'
    old.mkdir(parents=True)
    score = json.loads((runs_dir / 'toy-fcn8s' / runs.SCORE).read_text())
    (old / runs.SCORE).write_text(json.dumps(score))
    gone = sorted((page_runs.voc_dir('toy-fcn8s', data) / 'JPEGImages').glob('*.jpg'))[7]
    gone.unlink()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv('FCN_DATA_DIR', str(data))
        index, document, _ = page.build(runs_dir)
    return index, document, gone.stem


def load(url):
    dom, console = browser.run(url, dump_dom=True)
    assert console == [], console
    return browser.parse(dom)


def state_hash(document, **state):
    head = next(run for run in document['runs'] if run['model'] == MODELS[0])['heads'][0]
    state = dict({'group': f'{head["set"]}:{head["label"]}'}, **state)
    return '#' + '&'.join(f'{key}={quote(str(value), safe="")}' for key, value in state.items())


def images_of(document, model):
    run = next(run for run in document['runs'] if run['model'] == model)
    return run['heads'][0]['images']


def check_every_image_loaded(dom, folder=None):
    body = next(dom.find_all('body'))
    images = list(dom.find_all('img'))
    assert images and not any('broken' in img.classes() for img in images)
    assert 'data-images-broken' not in body.attrs
    assert int(body.attrs['data-images-loaded']) == len(images)
    if folder is not None:
        for img in images:
            assert (folder / img.attrs['src'].replace('%20', ' ')).is_file(), img.attrs['src']
    errors = next(ul for ul in dom.find_all('ul') if ul.attrs.get('id') == 'page-errors')
    assert list(errors.find_all('li')) == []  # the script caught no error


def rows(dom):
    return list(dom.find_all('tr', 'image-row'))


def test_the_worst_image_first_each_run_in_a_row_every_image_loads(site):
    index, document, gone = site
    dom = load(index.as_uri() + state_hash(document, sort='mean_iu-asc', by='toy-fcn8s'))
    check_every_image_loaded(dom, index.parent)
    shown = rows(dom)
    assert len(shown) == 20
    images = images_of(document, 'toy-fcn8s')
    worst = min(range(IMAGES), key=lambda i: images['mean_iu'][i])
    assert shown[0].attrs['data-id'] == images['ids'][worst]
    values = [float(row.attrs['data-mean-iu']) for row in shown]
    assert values == sorted(values)
    for row in shown:
        runs_shown = [cell.attrs['data-run'] for cell in row.find_all('td', 'run-cell')]
        assert runs_shown == MODELS
    text = dom.all_text()
    assert 'no score' in text and 'no per-image scores' in text  # named on the page


def test_the_class_filter_keeps_only_images_of_that_class(site):
    index, document, gone = site
    images = images_of(document, 'toy-fcn32s')
    counts = {c: sum(c in classes for classes in images['classes']) for c in range(1, 6)}
    rare = min((c for c in counts if counts[c]), key=counts.get)
    dom = load(index.as_uri() + state_hash(document, **{'class': rare}))
    check_every_image_loaded(dom, index.parent)
    shown = rows(dom)
    assert len(shown) == min(20, counts[rare])
    assert all(str(rare) in row.attrs['data-classes'].split() for row in shown)


def test_the_page_from_a_file_server_with_a_missing_image(site):
    index, document, gone = site
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, '-m', 'http.server', str(port), '--bind',
                               '127.0.0.1', '--directory', str(index.parent)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(('127.0.0.1', port)) == 0:
                    break
            time.sleep(0.05)
        # sorted by id, the first page holds the eighth image, the one gone
        dom = load(f'http://127.0.0.1:{port}/index.html'
                   + state_hash(document, sort='id-asc', page=1))
    finally:
        server.terminate()
        server.wait(timeout=10)
    check_every_image_loaded(dom)
    row = next(row for row in rows(dom) if row.attrs['data-id'] == gone)
    assert 'image missing' in row.all_text()
    assert [cell.attrs['data-run'] for cell in row.find_all('td', 'run-cell')] == MODELS
