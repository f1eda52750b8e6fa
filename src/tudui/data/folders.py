"""Datasets read from disk: class folders, the course's label-file layout, CSV.

Layouts, detected in this order for each `--data` path:
  * a .csv file of `path,label` rows (paths relative to the CSV's folder);
  * split folders: `root/train/` plus optional `root/val/` (or `valid/`) and `root/test/`,
    each in one of the layouts below;
  * label files: `root/ants_image/x.jpg` with `root/ants_label/x.txt` holding `ants` (a `root/classes.json`
    names classes here too: {"T-shirt_top": "T-shirt/top"} for `T-shirt_top_image/`);
  * class folders: `root/ants/*.jpg`, `root/bees/*.jpg` (classes sorted as torchvision's ImageFolder); a
    `root/classes.json` beside them (`tudui data export` writes one) names the class each folder holds, for names a
    folder cannot carry ('T-shirt/top' in the folder `T-shirt_top`);
  * one class: `ants/*.jpg`, a folder of images with no class folders is the class `ants` (`--data ants bees` is
    the course's `ants_dataset + bees_dataset`).
"""
from __future__ import annotations

import csv
import json
import os
import sys
import unicodedata
from pathlib import Path

import numpy as np

from ..core.errors import TuduiError
from ..core.files import write_text
from .images import BadImage, ImageScan, open_regular, scan_images, shown, special_file
from .sources import NAMED
from .labels import HOT_VALUES, PLURAL_COLUMNS, LabelReading, hot_value, labelled_split, nfc, parse_cells
from .split import Split

VAL_NAMES = ("val", "valid", "validation")
MANIFEST = "classes.json"  # {folder name: class name} beside class folders, UTF-8 JSON


def _subdirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _make(classes: list[str], items: list[tuple[str, str]], origin: str) -> Split:
    index = {c: i for i, c in enumerate(classes)}
    targets = np.array([index[label] for _, label in items], dtype=np.int64)
    return Split(classes, targets, paths=[p for p, _ in items], origin=origin)


def class_name(folder: Path, name: str | None = None) -> str:
    """The class that `folder` (or the `name` cut from it) stands for, in Unicode NFC.

    NFC: macOS writes 'café' decomposed (e + combining accent, NFD) where Linux and Windows keep what they were given,
    so one class copied between them can arrive in two spellings that look the same; both are one class. A name that
    is not UTF-8 text (Latin-1 bytes such as caf\\xe9) is refused: it cannot be shown, stored in a checkpoint or
    sent by the server, and nothing later could name the class."""
    name = folder.name if name is None else name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise TuduiError(f"class folder {shown(folder)} has a name that is not UTF-8 text (the \\x escapes are its "
                         "undecodable bytes); rename it in UTF-8, e.g. with `convmv -f latin1 -t utf-8`") from None
    return unicodedata.normalize("NFC", name)


def _warn_merged(spellings: dict[str, set[str]], what: str = "class folders") -> None:
    """One warning naming the class names that arrived in two Unicode spellings (their images are one class)."""
    merged = {c: sorted(s) for c, s in spellings.items() if len(s) > 1}
    if merged:
        print(f"warning: {what} " + "; ".join(f"{' and '.join(ascii(n) for n in names)} are one class {c!r}"
                                              for c, names in merged.items())
              + " (one name in two Unicode spellings, NFD as macOS writes it and NFC); their images are merged",
              file=sys.stderr)


def read_manifest(root: Path) -> dict[str, str]:
    """{folder name: class name} from `root/classes.json`, {} when there is none; both sides in NFC, as class_name
    reads folder names."""
    path = root / MANIFEST
    if not path.is_file():
        return {}
    what = f"{shown(path)} (class folder -> class name)"
    try:
        with open_regular(path) as fh:
            names = json.loads(fh.read().decode("utf-8"))
    except (BadImage, OSError, UnicodeDecodeError, ValueError) as e:
        raise TuduiError(f"{what} cannot be read: {e}; write it as a UTF-8 JSON object such as "
                         '{"T-shirt_top": "T-shirt/top"}, or delete it to use the folder names') from None
    if not isinstance(names, dict) or not all(isinstance(k, str) and isinstance(v, str) and v.strip()
                                              for k, v in names.items()):
        raise TuduiError(f"{what} must be a JSON object of folder names to non-empty class names, such as "
                         '{"T-shirt_top": "T-shirt/top"}; fix it, or delete it to use the folder names')
    nfc = {unicodedata.normalize("NFC", k): unicodedata.normalize("NFC", v.strip()) for k, v in names.items()}
    by_name: dict[str, list[str]] = {}
    for folder, name in nfc.items():
        by_name.setdefault(name, []).append(folder)
    twice = {n: f for n, f in by_name.items() if len(f) > 1}
    if twice:
        n, f = next(iter(twice.items()))
        raise TuduiError(f"{what} names the class {n!r} for {len(f)} folders ({', '.join(f)}); give each folder its "
                         "own class name (or put the images in one folder)")
    return nfc


def write_manifest(root: Path, names: dict[str, str]) -> Path:
    """Write `root/classes.json`: {folder name: class name}, UTF-8 (non-ASCII names as they are)."""
    return write_text(root / MANIFEST, json.dumps(names, ensure_ascii=False, indent=1) + "\n")


def read_class_folders(root: Path) -> Split:
    """Class folders under `root`, named by `root/classes.json` where it names them; a folder of images with no
    class folders holding images is one class named after the folder."""
    dirs = _subdirs(root)
    scan = scan_images(dirs)
    if not any(scan.files):
        flat = scan_images([root])  # recursive; the subfolders hold none, so these lie in root itself
        if flat.files[0]:
            flat.warn()
            name = class_name(Path(os.path.abspath(root)))  # `--data .` is the folder's own name
            return _make([name], [(str(f), name) for f in flat.files[0]], str(root))
    scan.warn()
    names = read_manifest(root)
    items, spellings = [], {}
    for d, files in zip(dirs, scan.files):
        if files:  # a folder without images is no class, whatever its name
            folder = class_name(d)
            name = names.get(folder, folder)
            spellings.setdefault(name, set()).add(d.name)
            items.extend((str(f), name) for f in files)
    _warn_merged(spellings)
    classes = sorted(spellings)
    if not items:
        raise TuduiError(_no_class_folders(root))
    return _make(classes, items, str(root))


def _no_class_folders(root: Path) -> str:
    """Why a folder gave no images, by what it does hold: a CSV, or nothing usable (a folder of loose images is one
    class: read_class_folders)."""
    files = sorted(p for p in root.iterdir() if p.is_file() and not p.name.startswith("."))
    csvs = [p for p in files if p.suffix.lower() == ".csv"]
    if csvs:
        return (f"{root} holds no images but {'a CSV file' if len(csvs) == 1 else 'CSV files'} "
                f"({', '.join(p.name for p in csvs)}); to read path,label rows, pass the CSV itself: --data {csvs[0]}")
    return (f"no images found in class folders under {root}; expected {root}/<class name>/<image files> "
            f"(extensions: .jpg .png .bmp .tif .webp ...)")


def is_label_file_layout(root: Path) -> bool:
    dirs = {d.name for d in _subdirs(root)}
    return any(n.endswith("_image") and n[: -len("_image")] + "_label" in dirs for n in dirs)


def read_label_files(root: Path, reading: LabelReading = LabelReading()) -> Split:
    """The course's layout: `X_image/img.jpg` + `X_label/img.txt` whose text is the label; a file of several lines
    (or a line `cat|dog`) gives its image several labels, and then the classes are the names the files hold."""
    pairs = [(d, root / (d.name[: -len("_image")] + "_label")) for d in _subdirs(root) if d.name.endswith("_image")]
    names = read_manifest(root)  # X -> the class X_image holds, as for class folders
    spellings: dict[str, set[str]] = {}
    for d, lab in pairs:
        if lab.is_dir():
            folder = class_name(d, d.name[: -len("_image")])
            spellings.setdefault(names.get(folder, folder), set()).add(d.name[: -len("_image")])
    _warn_merged(spellings, "label-file folders")
    classes = sorted(spellings)
    paths, cells, files, missing = [], [], [], []
    scan = scan_images([d for d, _ in pairs])
    scan.warn()
    for (img_dir, lab_dir), found in zip(pairs, scan.files):
        for f in found:
            txt = lab_dir / f.relative_to(img_dir).with_suffix(".txt")
            try:
                with open_regular(txt) as fh:  # a FIFO or /dev/zero named x.txt is refused, never read
                    text = fh.read()
            except BadImage as e:
                raise TuduiError(f"label file {shown(txt)} is {e.reason}; replace it with a text file holding the "
                                 f"class name of {shown(f.name)}") from None
            except OSError:
                missing.append(shown(txt))
                continue
            lines = [ln for ln in text.decode("utf-8", errors="replace").splitlines() if ln.strip()]
            paths.append(str(f))
            cells.append(lines)
            files.append(txt)
    if missing:
        raise TuduiError(f"{len(missing)} image(s) have no label file, e.g. {missing[0]}; "
                         "each X_image/name.ext needs X_label/name.txt holding its class name")
    if not paths:
        raise TuduiError(f"no labelled images found under {root}")
    # one line of one name is today's single label; several lines, or `cat|dog` on a line, are several labels
    lists = [[names.get(n, n) for line in lines for n in parse_cells([line], reading.task)[0]] for lines in cells]
    # auto: several names in one file make the data multi-label; an empty file stays a mistake unless --task multi
    multi = reading.task == "multi" or (reading.task == "auto" and any(len(labels) > 1 for labels in lists))
    if not multi:
        for txt, f, labels in zip(files, paths, lists):
            if not labels:
                raise TuduiError(f"label file {txt} is empty; write the class name of {Path(f).name} into it")
            if len(labels) == 1 and labels[0] not in classes:
                raise TuduiError(f"label '{labels[0]}' in {txt} names no class; classes (from the *_image folders) "
                                 f"are: {', '.join(classes)}. Fix the label or add a {labels[0]}_image/"
                                 f"{labels[0]}_label pair")
    found = {n for labels in lists for n in labels}
    # multi-label: the *_image folders' classes where the files name only those, else the names the files hold (one
    # `photos_image/` + `photos_label/` pair whose files list each photo's classes)
    return labelled_split(paths, lists, str(root), reading, lambda i: f"label file {files[i]}",
                          classes if not multi or found <= set(classes) else None)


KNOWN_HEADERS = {("path", "label"), ("image", "label"), ("file", "label"), ("filename", "label")}
HEADER_PROBE = 5  # rows after the first looked at to decide whether the first is a header


def _csv_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, cells stripped) of every row that is not blank or a # comment."""
    rows = []
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        for lineno, row in enumerate(csv.reader(f), start=1):
            if not row or not "".join(row).strip() or row[0].lstrip().startswith("#"):
                continue
            rows.append((lineno, [c.strip() for c in row]))
    return rows


def _resolve(csv_path: Path, p: str) -> str:
    return str((csv_path.parent / p) if not os.path.isabs(p) else Path(p))


def _has_header(path: Path, rows: list[tuple[int, list[str]]]) -> bool:
    """A first row whose path is not a file while a row after it is (`image_id,label`, `fname,labels`, ...), or
    one of the usual spellings (`path,label`) whatever the files."""
    first = rows[0][1]
    if len(first) >= 2 and (first[0].lower(), first[1].lower()) in KNOWN_HEADERS:
        return True
    if os.path.lexists(_resolve(path, first[0])):
        return False
    return any(os.path.isfile(_resolve(path, r[0])) for _, r in rows[1:1 + HEADER_PROBE])


LABEL_COLUMNS = {"label", "class", "category", "target", "tag", *PLURAL_COLUMNS}  # headers that name labels


def _found_columns(path: Path, rows: list[tuple[int, list[str]]]) -> tuple[int, int] | None:
    """(path column, label column) of a CSV whose first column names no file but exactly one other column does, in
    the rows after the first (`source,image_id,tags`, `label,path`), read from its header (the first row, whose cell
    in that column is no file): the label column is the one other column, or the one named like a label (LABEL_COLUMNS).
    None where the first column names files, or no column or several do. A header that leaves the label column open is
    one clear error naming the choices."""
    first, probe = rows[0][1], [r for _, r in rows[1:1 + HEADER_PROBE]]
    names_files = lambda k: any(k < len(r) and os.path.isfile(_resolve(path, r[k])) for r in probe)  # noqa: E731
    if len(first) < 2 or not probe or names_files(0):
        return None
    found = [k for k in range(1, len(first)) if names_files(k)]
    if len(found) != 1 or os.path.lexists(_resolve(path, first[found[0]])):
        return None
    pcol = found[0]
    others = [k for k in range(len(first)) if k != pcol]
    labelled = [k for k in others if first[k].lower() in LABEL_COLUMNS]
    if len(others) == 1 or len(labelled) == 1:
        return pcol, (others if len(others) == 1 else labelled)[0]
    raise TuduiError(f"{shown(path)}: column {first[pcol]!r} of its header ({','.join(first)}) holds the image files; "
                     f"name the label column: --csv-columns {first[pcol]} LABEL, LABEL one of "
                     f"{', '.join(first[k] for k in others)}")


def _columns(path: Path, header: list[str], reading: LabelReading) -> tuple[int, list[int]]:
    """(path column, label columns) by --csv-columns' names, found in the header."""
    lower = [h.lower() for h in header]
    found = []
    for name in reading.columns:
        if name in header:
            found.append(header.index(name))
        elif name.lower() in lower:
            found.append(lower.index(name.lower()))
        else:
            raise TuduiError(f"--csv-columns names {name!r}, which is not a column of {shown(path)}; its header is "
                             f"{','.join(header)}")
    return found[0], found[1:]


def read_csv(path: Path, reading: LabelReading = LabelReading()) -> Split:
    """A CSV of `path,label` rows (paths relative to the CSV's folder), with or without a header.

    The first row is a header when its path is not a file and a row after it names one (or it is `path,label`).
    Columns: --csv-columns PATH LABEL... names them; else the first is the path and the second the label, or, where a
    header names three or more columns all of whose values after the first are 0 or 1, those columns are the
    classes (multi-hot), or, where the first column names no file and another does, that one is the path and the
    label is read from the header's other column or the one named like a label (_found_columns, with a note). A
    label cell may name several classes (`cat|dog`: data/labels.py)."""
    rows = _csv_rows(path)
    if not rows:
        raise TuduiError(f"{path} holds no `path,label` rows")
    found = None if reading.columns else _found_columns(path, rows)
    header = rows[0][1] if reading.columns or found or _has_header(path, rows) else None
    if header is not None:
        rows = rows[1:]
        if not rows:
            raise TuduiError(f"{path} holds a header ({','.join(header)}) and no rows")
    if reading.columns:
        pcol, lcols = _columns(path, header, reading)
    elif found:
        pcol, lcols = found[0], [found[1]]
        print(f"note: {shown(path)}: image files in column {header[pcol]!r}, labels in {header[lcols[0]]!r} (as "
              f"--csv-columns {header[pcol]} {header[lcols[0]]} would read it; name others with it)")
    else:
        pcol, lcols = 0, [1]
        if header is not None and len(header) >= 3 and all(r[k].lower() in HOT_VALUES for _, r in rows
                                                            for k in range(1, len(header)) if k < len(r)):
            lcols = list(range(1, len(header)))  # one 0/1 column per class
    need = max(pcol, *lcols) + 1
    paths, cells, lines = [], [], []
    for lineno, row in rows:
        if len(row) < need:
            raise TuduiError(f"{path}:{lineno}: expected {need} columns"
                             + (f" ({','.join(header)})" if header else " (`path,label`)") + f", got {','.join(row)!r}")
        if not row[pcol]:
            raise TuduiError(f"{path}:{lineno}: empty path")
        paths.append(_resolve(path, row[pcol]))
        cells.append([row[k] for k in lcols])
        lines.append(lineno)
    where = lambda i: f"{path}:{lines[i]}"  # noqa: E731
    if len(lcols) > 1:  # multi-hot: the header names the classes
        classes = [nfc(header[k]) for k in lcols]
        lists = [[c for c, k, cell in zip(classes, lcols, row) if hot_value(cell, where(i), header[k]) == 1.0]
                 for i, row in enumerate(cells)]
        if reading.task != "single":
            reading = LabelReading(reading.columns, "multi", reading.classes)
    else:
        classes = None
        # a header may name fewer columns than its rows hold (`path` above `a.png,cat`): the label column is unnamed
        name = header[lcols[0]] if header and lcols[0] < len(header) else None
        lists = parse_cells([c[0] for c in cells], reading.task, name)
    missing, scan = [], ImageScan()
    for p in paths:
        what = special_file(p)
        if what:  # a FIFO would hang the run, /dev/zero would fill the memory: never read, named in a warning
            scan.special.append((p, what))
        elif not os.path.isfile(p):
            missing.append(p)
    if missing:
        raise TuduiError(f"{len(missing)} file(s) listed in {path} do not exist, e.g. {missing[0]}"
                         + ("" if header else "; if the first row is a header, name the columns with "
                            "--csv-columns PATH LABEL"))
    scan.warn()
    special = {p for p, _ in scan.special}
    keep = [i for i, p in enumerate(paths) if p not in special]
    if not keep:
        raise TuduiError(f"none of the files listed in {path} is a regular file")
    return labelled_split([paths[i] for i in keep], [lists[i] for i in keep], str(path), reading,
                          lambda j: where(keep[j]), classes)


def read_layout(root: Path, reading: LabelReading = LabelReading()) -> Split:
    """One folder (or CSV) in whichever layout it uses."""
    if reading.columns and not (root.is_file() and root.suffix.lower() == ".csv"):
        raise TuduiError(f"--csv-columns names the columns of a CSV, and --data {shown(root)} is not a .csv file")
    if root.is_file():
        if root.suffix.lower() == ".csv":
            return read_csv(root, reading)
        raise TuduiError(f"{root} is a file; --data takes a dataset name, a folder or a .csv of path,label")
    if not root.is_dir():
        raise TuduiError(f"{shown(root)} is {special_file(root) or 'not a file or folder'}; --data takes a dataset name, a folder "
                         "or a .csv of path,label")
    if is_label_file_layout(root):
        return read_label_files(root, reading)
    return read_class_folders(root)


def split_folders(root: Path) -> dict[str, Path]:
    """{'train': root/train, 'val': root/val (or valid/, validation/), 'test': root/test} for the folders that
    exist, when `root` has a train/ folder; {} when it is a single split."""
    if not (root.is_dir() and (root / "train").is_dir()):
        return {}
    found = {"train": root / "train"}
    val = next((root / n for n in VAL_NAMES if (root / n).is_dir()), None)
    if val is not None:
        found["val"] = val
    if (root / "test").is_dir():
        found["test"] = root / "test"
    return found


def read_folder_splits(path: str, reading: LabelReading = LabelReading()) -> dict[str, Split]:
    """{'train': ..., optional 'val', 'test'} for one `--data` path; `reading`: how CSV columns and label cells are
    read (--csv-columns, --task, --classes)."""
    root = Path(path).expanduser()
    if not root.exists():
        raise TuduiError(f"--data {path}: no such file or folder (named datasets: {', '.join(NAMED)})")
    folders = split_folders(root)
    if folders:
        return {name: read_layout(folder, reading) for name, folder in folders.items()}
    if root.is_dir() and not any(True for _ in root.iterdir()):
        raise TuduiError(f"--data {path} is an empty folder")
    return {"train": read_layout(root, reading)}
