"""Progress bars: tqdm on a terminal; on a log file (a workflow job, a pipe) one plain
line every :data:`LOG_INTERVAL` seconds instead of thousands of carriage-return frames."""
from __future__ import annotations

import os
import sys

from tqdm import tqdm

#: seconds between two progress lines when stderr is not a terminal
LOG_INTERVAL = float(os.environ.get("ECDP_PROGRESS_INTERVAL", "30"))


class _Lines:
    """A file for tqdm that turns each redrawn frame into one line."""

    def __init__(self, stream):
        self.stream = stream

    def write(self, s: str) -> None:
        s = s.replace("\r", "").strip("\n")
        if s.strip():
            self.stream.write(s + "\n")

    def flush(self) -> None:
        self.stream.flush()


def bar(iterable=None, **kw) -> tqdm:
    """``tqdm(iterable, **kw)``, as lines on a non-terminal stderr (module docstring)."""
    stream = kw.pop("file", sys.stderr)
    if not getattr(stream, "isatty", lambda: False)():
        kw.setdefault("mininterval", LOG_INTERVAL)
        kw.setdefault("ncols", 100)
        kw.pop("dynamic_ncols", None)
        stream = _Lines(stream)
    return tqdm(iterable, file=stream, **kw)
