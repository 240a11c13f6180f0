#!/usr/bin/env python3
"""Debian's Chromium, headless, for the results page's browser test: installed with
apt-get when missing (as root; otherwise the command to run is printed), and run on a page
to get its DOM after the page's script ran, the console's messages, or a screenshot.

  browser.py install          # apt-get install chromium if missing (root), else say why not
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile
from html.parser import HTMLParser

PACKAGE = 'chromium'
# Chromium logs each console message to stderr as `...:INFO:CONSOLE:LINE] "text", source: URL`.
CONSOLE = re.compile(r':CONSOLE(?:\(\d+\)|:\d+)\] "(.*)", source: (.*)')


def program():
    return shutil.which('chromium') or shutil.which('chromium-browser')


def install():
    """Install Chromium where it is missing. Returns None when it is ready, else the reason
    it is not (for a test's skip)."""
    if program():
        return None
    if os.geteuid() != 0:
        return f'the browser test needs Debian\'s {PACKAGE}; as root: apt-get install {PACKAGE}'
    for command in (['apt-get', 'update'],
                    ['apt-get', 'install', '-y', '--no-install-recommends', PACKAGE]):
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'})
        if result.returncode != 0:
            return f'`{" ".join(command)}` failed: {result.stderr.strip()[-500:]}'
    return None if program() else f'installed {PACKAGE} but no chromium program is on PATH'


def run(url, *, dump_dom=False, screenshot=None, size=(1400, 1800), timeout=120):
    """Load `url` headless; returns (DOM after the page's scripts ran, or '', console
    messages as (text, source))."""
    with tempfile.TemporaryDirectory(prefix='fcn-chromium-') as profile:
        command = [program(), '--headless', '--disable-gpu', '--no-first-run',
                   '--hide-scrollbars', f'--user-data-dir={profile}',
                   '--enable-logging=stderr', '--v=0', f'--window-size={size[0]},{size[1]}',
                   '--virtual-time-budget=10000']
        if os.geteuid() == 0:
            command.append('--no-sandbox')  # Chromium's sandbox refuses to run as root
        command.append('--dump-dom' if dump_dom else f'--screenshot={screenshot}')
        done = subprocess.run(command + [url], capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f'chromium exited with {done.returncode} on {url}: '
                           f'{done.stderr.strip()[-1000:]}')
    return done.stdout, [match.groups() for match in map(CONSOLE.search,
                                                         done.stderr.splitlines()) if match]


class Element:
    def __init__(self, tag, attrs, parent):
        self.tag, self.attrs, self.parent = tag, dict(attrs), parent
        self.children, self.text = [], ''

    def classes(self):
        return self.attrs.get('class', '').split()

    def find_all(self, tag=None, cls=None):
        for child in self.children:
            if (tag is None or child.tag == tag) and (cls is None or cls in child.classes()):
                yield child
            yield from child.find_all(tag, cls)

    def all_text(self):
        return self.text + ''.join(child.all_text() for child in self.children)


VOID_TAGS = {'img', 'input', 'br', 'hr', 'meta', 'link', 'source', 'col', 'area', 'wbr'}


class _Builder(HTMLParser):
    def __init__(self):
        super().__init__()
        self.root = self.current = Element('document', {}, None)

    def handle_starttag(self, tag, attrs):
        element = Element(tag, attrs, self.current)
        self.current.children.append(element)
        if tag not in VOID_TAGS:
            self.current = element

    def handle_endtag(self, tag):
        node = self.current
        while node is not None and node.tag != tag:
            node = node.parent
        if node is not None and node.parent is not None:
            self.current = node.parent

    def handle_data(self, data):
        self.current.text += data


def parse(html):
    """A DOM dump as a tree of Elements (tag, attrs, children, text)."""
    builder = _Builder()
    builder.feed(html)
    return builder.root


if __name__ == '__main__':
    if sys.argv[1:] != ['install']:
        sys.exit(__doc__)
    reason = install()
    print(reason or f'chromium: {program()}')
