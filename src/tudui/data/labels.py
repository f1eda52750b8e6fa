"""Labels as datasets write them: one class name per image, or several (multi-label), as names or multi-hot.

A label cell of a CSV (or a line of a label file) may hold several names: `cat|dog`, `cat;dog`, or `cat dog`
(fastai's and Keras' space-separated form). `|` and `;` always separate names. Where no cell of the column uses them,
a space separates names under `--task multi`, and under `--task auto` when the column is named in the plural
(`labels`, `tags`, `classes`, `categories`) or every word of the cell is, alone, the label of some other image:
`golden retriever` stays one class where no image is labelled `golden` alone, and `Ankle boot|Bag` is two classes.

`--task`: single (one class per image, softmax), multi (any number per image, sigmoid per class) or auto: multi as
soon as one image has more or fewer than one label. A multi-label split's targets are multi-hot, (N, K) float32;
a single-label split's are class indices, (N,) int64 (data/split.py).
"""
from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ..core.errors import TuduiError
from .split import Split

TASKS = ("auto", "single", "multi")
PLURAL_COLUMNS = {"labels", "tags", "classes", "categories", "targets"}
_SEPARATORS = re.compile(r"[|;]")
HOT_VALUES = {"0": 0.0, "1": 1.0, "0.0": 0.0, "1.0": 1.0, "true": 1.0, "false": 0.0}


@dataclass(frozen=True)
class LabelReading:
    """How label columns and files are read: `columns` (--csv-columns PATH LABEL...: the path column, then one
    label column or one 0/1 column per class), `task` (--task), `classes` (--classes: the class order, and the only
    names allowed)."""

    columns: tuple[str, ...] | None = None
    task: str = "auto"
    classes: tuple[str, ...] | None = None

    @classmethod
    def of(cls, columns=None, task: str = "auto", classes=None) -> "LabelReading":
        if task not in TASKS:
            raise TuduiError(f"--task takes one of {', '.join(TASKS)}, got {task!r}")
        if columns is not None and len(columns) < 2:
            raise TuduiError(f"--csv-columns takes the path column, then the label column (or one 0/1 column per "
                             f"class), e.g. --csv-columns image_id labels; got {' '.join(map(str, columns))}")
        return cls(tuple(map(str, columns)) if columns else None, task, tuple(map(str, classes)) if classes else None)


def nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name.strip())


def split_cell(cell: str, spaces: bool) -> list[str]:
    """The class names in one label cell: separated by `|` or `;` (and by spaces when `spaces`), blanks dropped."""
    parts = _SEPARATORS.split(cell)
    if spaces:
        parts = [w for p in parts for w in p.split()]
    return [nfc(p) for p in parts if p.strip()]


def parse_cells(cells: Sequence[str], task: str = "auto", column: str | None = None) -> list[list[str]]:
    """Each label cell's class names (see the module docstring for when a space separates names)."""
    if task == "single":  # names are taken whole; `|` and `;` still show a cell of several (refused later)
        return [split_cell(c, False) for c in cells]
    lists = [split_cell(c, False) for c in cells]
    if any(_SEPARATORS.search(c) for c in cells):  # `|` or `;` separate this column's names: a space is part of one
        return lists
    spaces = task == "multi" or (column is not None and column.strip().lower() in PLURAL_COLUMNS)
    if spaces:
        return [[w for n in names for w in n.split()] for names in lists]
    alone = {names[0] for names in lists if len(names) == 1}
    return [[w for n in names for w in (n.split() if all(w in alone for w in n.split()) else [n])]
            for names in lists]


def hot_value(cell: str, where: str, column: str) -> float:
    """A multi-hot cell: 0 or 1 (also 0.0, 1.0, true, false)."""
    v = HOT_VALUES.get(cell.strip().lower())
    if v is None:
        raise TuduiError(f"{where}: the class column {column!r} holds {cell!r}; a multi-hot column holds 0 or 1 "
                         "(name the path and label columns with --csv-columns PATH LABEL if this CSV has other "
                         "columns)")
    return v


def is_multi(label_lists: Sequence[Sequence[str]]) -> bool:
    return any(len(names) != 1 for names in label_lists)


def labelled_split(paths: list, label_lists: list[list[str]], origin: str, reading: LabelReading = LabelReading(),
                   where: Callable[[int], str] | None = None, classes: list[str] | None = None):
    """A Split of `paths` whose item i carries the class names `label_lists[i]`: single-label (int targets) or
    multi-label (multi-hot targets) as `reading.task` says, classes sorted as ImageFolder sorts them (or
    `reading.classes`'s order, or `classes` given by a multi-hot header). `where(i)` names item i in messages."""
    where = where or (lambda i: f"{origin} item {i}")
    multi = is_multi(label_lists)
    if reading.task == "single" and multi:
        i = next(i for i, names in enumerate(label_lists) if len(names) != 1)
        got = "no label" if not label_lists[i] else f"{len(label_lists[i])} labels ({'|'.join(label_lists[i])})"
        raise TuduiError(f"{where(i)} has {got}; --task single takes exactly one label per image: give it one, or "
                         "use --task multi (or auto) to train a multi-label model")
    multi = multi or reading.task == "multi"
    names = list(reading.classes) if reading.classes else (classes or sorted({n for ns in label_lists for n in ns}))
    index = {n: k for k, n in enumerate(names)}
    for i, ns in enumerate(label_lists):
        unknown = [n for n in ns if n not in index]
        if unknown:
            raise TuduiError(f"{where(i)} has the label {unknown[0]!r}, which is not one of the classes "
                             f"({', '.join(names[:20])}{', ...' if len(names) > 20 else ''}); fix the label"
                             + (" or add it to --classes" if reading.classes else ""))
    if not multi:
        targets = np.array([index[ns[0]] for ns in label_lists], dtype=np.int64)
    else:
        targets = multi_hot(label_lists, index)
    return Split(names, targets, paths=paths, origin=origin)


def multi_hot(label_lists: Sequence[Sequence[str]], index: dict[str, int]) -> np.ndarray:
    """(N, K) float32: 1 where image n carries class k."""
    hot = np.zeros((len(label_lists), len(index)), dtype=np.float32)
    for i, ns in enumerate(label_lists):
        for n in ns:
            hot[i, index[n]] = 1.0
    return hot


def names_of(row: np.ndarray, classes: Sequence[str]) -> list[str]:
    """The class names of one multi-hot row."""
    return [classes[k] for k in np.flatnonzero(np.asarray(row) > 0.5)]
