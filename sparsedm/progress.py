"""Progress bars that suit where they are written: tqdm's bar on a terminal, plain lines in a log file.

tqdm redraws its bar with carriage returns; written to a file (nohup, SLURM, CI) every redraw stays there as one
long line of frames. When the stream is not a terminal, `progress_bar` keeps tqdm's text (count, rate, postfix)
and writes it as a line of its own, once per `every` items, or at most every LINE_EVERY_S seconds when
`every` is not given, plus the final count.

    bar = progress_bar(total=steps, desc="train", every=25)  # a line at steps 0, 25, 50, ... and the last
"""

import math
import sys
from typing import Optional

from tqdm import std
from tqdm.auto import tqdm

LINE_EVERY_S = 30.0  # seconds between lines of a bar without `every` in a log file


class LogLines(std.tqdm):
    """tqdm writing one full line per report instead of redrawing (tqdm's `display` is its documented hook)."""

    def __init__(self, *args, every: Optional[int] = None, **kwargs):
        self.every, self.printed_n = every, None
        super().__init__(*args, **kwargs)

    def display(self, msg=None, pos=None):
        if msg is not None:  # tqdm clearing or hiding the bar: a log keeps what it has
            return False
        if self.n == self.printed_n or (self.every and self.printed_n is not None and not self._due()):
            return False
        self.fp.write(self.__str__() + "\n")
        self.fp.flush()
        self.printed_n = self.n
        return True

    def _due(self) -> bool:
        return self.n // self.every > self.printed_n // self.every or self.n == self.total

    def close(self):
        if not self.disable and self.n != self.printed_n:
            self.every = None  # the final count, whatever the step
            self.display()
        super().close()


def progress_bar(iterable=None, every: Optional[int] = None, file=None, **kwargs):
    """tqdm(iterable, **kwargs) on a terminal; elsewhere `LogLines`: a line per `every` items (or per
    LINE_EVERY_S seconds), no carriage returns. `disable=None` keeps tqdm's meaning: no output off a terminal."""
    stream = file if file is not None else sys.stderr
    if stream.isatty():
        return tqdm(iterable, file=file, **kwargs)
    kwargs.pop("dynamic_ncols", None)  # a file has no width to follow
    timing = {"miniters": every, "mininterval": 0} if every else {"mininterval": LINE_EVERY_S}
    return LogLines(
        iterable, every=every, file=stream, leave=False, ascii=True, maxinterval=math.inf, **timing, **kwargs
    )
