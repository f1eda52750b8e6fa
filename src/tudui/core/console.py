"""Console output every layer may use: progress bars on a terminal or in a notebook (one line every few seconds in
logs), text tables."""
from __future__ import annotations

import os
import sys
import time

import wcwidth
from tqdm import tqdm

from .notebook import has_widgets, in_notebook


class Progress:
    """Progress over `total` steps. A tqdm bar on a terminal; in a notebook (an IPython kernel) tqdm's widget where
    ipywidgets is installed, its text bar otherwise; anywhere else (logs, pipes) a plain line every `interval` s."""

    def __init__(self, total: int, desc: str, interval: float = 10.0, enabled: bool = True) -> None:
        self.total, self.desc, self.interval = total, desc, interval
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.notebook = enabled and in_notebook()  # a kernel's stderr is no terminal, but its output shows a bar
        self.bar = widget_bar(total, desc) if enabled and self.notebook and has_widgets() else None
        if self.bar is None and enabled and (self.tty or self.notebook):
            self.bar = tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True, file=sys.stderr)
        self.start = self.last = time.perf_counter()
        self.n = 0

    def update(self, n: int = 1, **postfix) -> None:
        self.n += n
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.last = time.perf_counter()
                self.bar.set_postfix(postfix, refresh=False)
            return
        now = time.perf_counter()
        if now - self.last >= self.interval:
            self.last = now
            extra = "  ".join(f"{k} {v}" for k, v in postfix.items())
            print(f"{self.desc} {self.n}/{self.total}  {extra}", file=sys.stderr, flush=True)

    def due(self) -> bool:
        """Whether a display is coming (so callers sync device values only then)."""
        if not self.enabled:
            return False
        # A terminal bar refreshes its numbers ~4 times a second; logs get a line every `interval` s.
        return time.perf_counter() - self.last >= (0.25 if self.bar is not None else self.interval)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def widget_bar(total: int, desc: str):
    """tqdm's notebook widget, or None where ipywidgets cannot make one (then the text bar is used)."""
    from tqdm.notebook import tqdm as notebook_tqdm  # imports IPython.display and ipywidgets: in a kernel only

    try:
        return notebook_tqdm(total=total, desc=desc, leave=False)
    except ImportError:  # "IProgress not found": an ipywidgets too old or broken to import
        return None


def table(headers: list[str], rows: list[list], align: str | None = None) -> str:
    """A plain-text table; `align` has one of '<' or '>' per column (default: first left, rest right).

    Columns are padded by display width, not code points: a Chinese character takes two terminal cells.
    """
    cells = [[shown(h) for h in headers]] + [[shown(c) for c in r] for r in rows]  # names are users': escaped
    widths = [max(wcwidth.width(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "<" + ">" * (len(headers) - 1)
    just = {"<": wcwidth.ljust, ">": wcwidth.rjust}
    lines = []
    for j, r in enumerate(cells):
        lines.append("  ".join(just[a](c, w) for c, a, w in zip(r, align, widths)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def shown(text: object) -> str:
    """`text` (a name or path the user gave) safe to print: control characters (newlines, terminal escape codes,
    DEL, C1 codes) and undecodable file-name bytes appear as escapes, so a name can neither break a one-line message
    nor drive the terminal. Everything printable, Chinese included, is kept as it is."""
    s = os.fsdecode(text) if isinstance(text, (bytes, os.PathLike)) else str(text)
    if s.isprintable():
        return s
    return "".join(c if c.isprintable() or c == " " else _escape(c) for c in s)


def _escape(c: str) -> str:
    if 0xDC80 <= ord(c) <= 0xDCFF:  # a file-name byte that is not UTF-8 (os.fsdecode's surrogateescape)
        return f"\\x{ord(c) - 0xDC00:02x}"
    return repr(c)[1:-1] if ord(c) < 0x10000 else f"\\U{ord(c):08x}"
