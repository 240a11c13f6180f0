"""fcn/progress.py: what a log and a terminal are shown of long work."""
import io

from fcn.progress import BYTES, Progress


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_per_tenth_and_the_last_line_once():
    out = io.StringIO()
    progress = Progress('score voc', 40, out=out)
    for _ in range(40):
        progress.update()
    progress.finish()  # already done: nothing more
    lines = out.getvalue().splitlines()
    # the first image (work has begun), each tenth (every 4 images), the last line at 40
    assert [line.split()[2] for line in lines] == ['1/40'] + [f'{n}/40' for n in range(4, 41, 4)]
    assert all(line.startswith('score voc: ') and line.endswith('/s)') for line in lines)


def test_a_terminal_gets_one_line_redrawn_in_place():
    out = Terminal()
    progress = Progress('infer', 3, out=out)
    for _ in range(3):
        progress.update()
    text = out.getvalue()
    assert text.count('\n') == 1 and text.endswith('\n')
    assert text.rsplit('\r', 1)[1].startswith('infer: 3/3 (')


def test_bytes_show_percent_and_megabytes_and_an_unknown_total_still_ends():
    out = io.StringIO()
    progress = Progress('VOC.tar', 2_000_000, done=500_000, unit=BYTES, out=out)
    progress.update(500_000)
    assert out.getvalue().splitlines()[-1].startswith('  VOC.tar:  50.0% 1.0/2.0 MB ')
    out = io.StringIO()
    progress = Progress('stream', None, unit=BYTES, out=out)
    progress.update(3_000_000)
    assert out.getvalue() == ''  # no tenths without a total
    progress.finish()
    assert out.getvalue().startswith('  stream: 3.0 MB ') and out.getvalue().endswith('MB/s\n')
