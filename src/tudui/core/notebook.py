"""Jupyter, when tudui runs in one: whether an IPython kernel is running this process, showing a picture or an HTML
table inline, and the small HTML pieces results are drawn with (escaped text, PNG thumbnails as data URIs).

Nothing here imports IPython unless a kernel has already imported it, so a terminal or a log sees no change and pays
no import; ipywidgets (the notebook progress bar, core/console.py) is optional too.
"""
from __future__ import annotations

import base64
import html
import importlib.util
import io
import sys
from pathlib import Path


def in_notebook() -> bool:
    """True where an IPython kernel (Jupyter, VS Code, Colab) runs this process: the same test as tqdm.autonotebook.
    IPython's terminal shell is no kernel (it has a terminal: the terminal's bar and lines stay)."""
    ipython = sys.modules.get("IPython")  # a kernel has always imported it; never imported here
    get = getattr(ipython, "get_ipython", None)
    shell = get() if get is not None else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def has_widgets() -> bool:
    """Whether ipywidgets is installed (tqdm's notebook bar is a widget)."""
    return sys.modules.get("ipywidgets") is not None or (
        "ipywidgets" not in sys.modules and importlib.util.find_spec("ipywidgets") is not None)


def display(obj, **kwargs):
    """IPython.display.display(obj) in a kernel (returns its handle with display_id=True); None elsewhere."""
    if not in_notebook():
        return None
    from IPython.display import display as ipython_display  # imported by the kernel already

    return ipython_display(obj, **kwargs)


def escape(text: object) -> str:
    return html.escape(str(text))


def png_uri(image, max_side: int | None = None) -> str:
    """A PIL image, an (H, W[, C]) uint8 array or a PNG file as a `data:image/png;base64,...` URI; `max_side`: shrunk
    (keeping its shape) to at most that many pixels a side."""
    import numpy as np
    from PIL import Image

    if isinstance(image, (str, Path)):
        with Image.open(image) as opened:
            image = opened.copy()  # read now, the file closed
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image[..., 0] if image.ndim == 3 and image.shape[2] == 1 else image)
    if max_side and max(image.size) > max_side:
        image = image.copy()
        image.thumbnail((max_side, max_side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def html_table(headers: list[str], rows: list[list[str]], raw: tuple[int, ...] = ()) -> str:
    """A small HTML table; every cell is escaped except the columns in `raw` (already HTML, e.g. an <img>)."""
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{c if i in raw else escape(c)}</td>" for i, c in enumerate(r)) + "</tr>"
                   for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


class HTML:
    """HTML a notebook shows as such (IPython's own HTML object, without importing IPython)."""

    def __init__(self, text: str) -> None:
        self.text = text

    def _repr_html_(self) -> str:
        return self.text
