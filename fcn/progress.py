"""Progress of long work, on standard error: one line redrawn in place on a terminal, a
line per tenth of the total in a log (SLURM, make's output piped), and a last line when
the work is done. Counts are items (images: `12/100 (3.4/s)`) or bytes (downloads,
archives: `45.0% 1.0/2.0 MB 3.0 MB/s`). Only the standard library: dataset preparation
uses it before the virtualenv has Caffe."""
import sys
import time

ITEMS, BYTES = 'items', 'bytes'
REDRAW_SECONDS = 0.2  # a terminal's line is redrawn at most this often


class Progress:
    def __init__(self, label, total, done=0, unit=ITEMS, out=None):
        self.label, self.total, self.done, self.unit = label, total, done, unit
        self.out = out or sys.stderr
        self.start, self.start_done = time.monotonic(), done
        self.shown_at, self.shown_tenth = 0.0, -1
        self.terminal = self.out.isatty()
        self.finished = False

    def update(self, count=1):
        """`count` more done; the last line is written once the total is reached."""
        self.done += count
        if self.total and self.done >= self.total:
            self.finish()
            return
        now = time.monotonic()
        if self.terminal and now - self.shown_at >= REDRAW_SECONDS:
            self.shown_at = now
            self.out.write('\r' + self.line(now))
            self.out.flush()
        elif not self.terminal and self.total:
            tenth = 10 * self.done // self.total
            if tenth > self.shown_tenth:
                self.shown_tenth = tenth
                self.out.write(self.line(now) + '\n')
                self.out.flush()

    def finish(self):
        """The last line (once), also where the total was unknown or not reached."""
        if not self.finished:
            self.finished = True
            self.out.write(('\r' if self.terminal else '') + self.line(time.monotonic()) + '\n')
            self.out.flush()

    def line(self, now):
        seconds = max(now - self.start, 1e-6)
        rate = (self.done - self.start_done) / seconds
        if self.unit == BYTES:
            if self.total:
                return (f'  {self.label}: {100.0 * self.done / self.total:5.1f}% '
                        f'{self.done / 1e6:.1f}/{self.total / 1e6:.1f} MB {rate / 1e6:.1f} MB/s')
            return f'  {self.label}: {self.done / 1e6:.1f} MB {rate / 1e6:.1f} MB/s'
        total = f'/{self.total}' if self.total else ''
        return f'{self.label}: {self.done}{total} ({rate:.1f}/s)'
