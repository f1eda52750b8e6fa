"""`tudui data check PATH...`: find what would hurt training before a night is spent on it.

Each PATH is a dataset folder (with train/ val/ test/ split folders, or one split in
any layout folders.py reads) or a CSV of path,label. Reported:
  errors   (exit status 1): zero-byte, truncated/corrupt and non-image files with image
           extensions; the same image in train and in val/test (test data leaking into
           training); the same image under two labels; layout problems (e.g. a label file missing);
           training data of one class (all PATHs together, as `tudui train --data PATH...` refuses it)
  warnings: other files in class folders (training ignores them), duplicates within a split,
           unusual colour modes (one finding per mode and split, with a few example files), very small or
           very elongated images, strong class imbalance, fewer than 10 validation images of a class (a val/
           folder's, or about 10% of a class's training images when --val-split holds them out)
Duplicates are exact: a BLAKE2b hash of the decoded pixels (mode, size, bytes), so the
same picture saved twice, or as PNG and BMP, is found; lossy re-encodings are not. A file
listed several times (a CSV naming it on many rows) is read once and reported once.
The printed report lists the first SHOWN_PER_KIND findings of each kind and counts the rest
(a CSV of 100,000 rows naming two files would otherwise print 100,000 lines); --json has all.
"""
from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..core.config import TrainConfig
from ..core.console import table
from ..core.errors import TuduiError
from .folders import MANIFEST, is_label_file_layout, read_layout, split_folders
from .images import BadImage, is_image_file, open_image
from .labels import LabelReading, names_of
from .sampler import LONG_TAILED, auto_balance, imbalance_ratio
from .split import concat_splits, require_two_classes, stratified_split

USUAL_MODES = {"L", "RGB"}
MIN_SIDE = 8  # pixels; smaller images carry almost nothing once resized
MAX_ASPECT = 4.0  # longer side / shorter side; more is distorted by the square resize
IMBALANCE_WARN = LONG_TAILED  # largest class / smallest class (10: where --balance auto and --best-by auto act)
# fewer validation images of a class than this: top-1 on them cannot rank epochs (`--best-by auto` then keeps the last
# epoch: engine/choices.py AUTO_BEST, the same number)
MIN_VAL_PER_CLASS = 10
VAL_SPLIT = TrainConfig.__dataclass_fields__["val_split"].default  # the hold-out when there is no val/ folder
SHOWN_PER_KIND = 10  # findings of one kind printed before "and N more"
EXAMPLES = 3  # files named in a summary of many (the images of one unusual mode)

# Each unusual Pillow mode: (what it is, what reading it for training does: images.py's _to_mode).
_ALPHA = "the alpha channel is dropped"
_DEEP = "scaled to 8 bits"
MODE_NOTES = {
    "RGBA": ("RGB with transparency", _ALPHA), "RGBa": ("RGB with transparency", _ALPHA),
    "LA": ("grey with transparency", _ALPHA), "La": ("grey with transparency", _ALPHA),
    "PA": ("palette with transparency", "expanded to RGB, " + _ALPHA),
    "P": ("palette colours", "expanded to RGB, or to grey for a 1-channel model"),
    "1": ("1-bit black and white", "converted to 8-bit grey"),
    "I;16": ("16-bit grey", _DEEP), "I;16B": ("16-bit grey", _DEEP), "I;16L": ("16-bit grey", _DEEP),
    "I;16N": ("16-bit grey", _DEEP), "I": ("32-bit grey", _DEEP + " by its range"),
    "F": ("floating-point grey", _DEEP + " by its range"), "CMYK": ("print colours", "converted to RGB"),
}


@dataclass
class Issue:
    severity: str  # "error" or "warning"
    kind: str  # zero-byte, corrupt, not-an-image, other-file, duplicate, leak, conflicting-labels, mode, size, ...
    path: str
    detail: str


@dataclass
class SplitReport:
    name: str
    root: str
    images: int = 0
    classes: dict[str, int] = field(default_factory=dict)  # class -> readable images
    imbalance: float | None = None  # largest class / smallest class
    sizes: dict[str, int] = field(default_factory=dict)  # "WxH" -> count (most common first)
    modes: dict[str, int] = field(default_factory=dict)
    # multi-label data (several or no classes per image): `classes` counts the images carrying each class
    multi_label: bool = False
    cardinality: float | None = None  # labels per readable image, on average
    most_labels: int = 0  # the most labels one image carries
    no_label: int = 0  # readable images carrying no class
    pairs: dict[str, int] = field(default_factory=dict)  # "a + b" -> images carrying both (most common first, 10)


@dataclass
class CheckReport:
    splits: list[SplitReport] = field(default_factory=list)
    issues: list[Issue] = field(default_factory=list)
    # the --balance mode recommended for the training images: {"mode", "why"} (None: no readable training images)
    balance: dict | None = None

    @property
    def errors(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[Issue]:
        return [i for i in self.issues if i.severity == "warning"]

    def to_dict(self) -> dict:
        return {"splits": [asdict(s) for s in self.splits], "issues": [asdict(i) for i in self.issues],
                "balance": self.balance, "errors": len(self.errors), "warnings": len(self.warnings)}


def _inspect(path: str) -> tuple[str | None, tuple[int, int] | None, str | None, str | None]:
    """(pixel hash, (w, h), mode, problem) for one file; problem is 'kind: detail' or None."""
    try:
        if os.path.getsize(path) == 0:
            return None, None, None, "zero-byte: the file is empty (0 bytes)"
        img = open_image(path)
        digest = hashlib.blake2b(f"{img.mode}{img.size}".encode(), digest_size=16)
        digest.update(img.tobytes())
        if img.mode in ("P", "PA"):  # the bytes are palette indices: two pictures can share them in other colours
            digest.update(bytes(img.getpalette() or []))
        return digest.hexdigest(), img.size, img.mode, None
    except BadImage as e:
        return None, None, None, f"{e.kind}: {e.reason}"
    except OSError as e:
        return None, None, None, f"unreadable: {e.strerror or e}"


def _other_files(root: Path, listed: set[str]) -> list[str]:
    """Files under a folder layout that training never reads (not images, or not in any class folder)."""
    if root.is_file():
        return []
    label_dirs = {d.name for d in root.iterdir() if d.is_dir() and d.name.endswith("_label")} \
        if is_label_file_layout(root) else set()
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in label_dirs)
        for f in sorted(filenames):
            p = os.path.join(dirpath, f)
            if not f.startswith(".") and p not in listed and not is_image_file(f) \
                    and not (f == MANIFEST and dirpath == str(root)):  # the class names of the folders
                out.append(p)
    return out


def check_data(paths: list[str], csv_columns: list[str] | None = None) -> CheckReport:
    """Every finding on the datasets at `paths`, read as `tudui train --data PATH...` reads them (`csv_columns`: its
    --csv-columns): the training images of all paths together must have two classes, as training requires."""
    report = CheckReport()
    reading = LabelReading.of(csv_columns)
    seen: dict[str, list[tuple[str, str, str]]] = defaultdict(list)  # hash -> [(split, path, label)]
    training = []  # the splits `tudui train --data PATHS` trains on: train/ folders, or whole paths without them
    trained_on: list[tuple[SplitReport, bool]] = []  # their reports, and whether --val-split holds images out
    for entry in paths:
        path = Path(entry).expanduser()
        if not path.exists():
            raise TuduiError(f"data check {entry}: no such file or folder")
        these: list[SplitReport] = []  # this path's splits
        for split_name, root in (split_folders(path) or {path.name or str(path): path}).items():
            try:
                split = read_layout(root, reading)
            except TuduiError as e:
                report.issues.append(Issue("error", "layout", str(root), str(e)))
                continue
            if split.paths is None:
                continue
            sr = SplitReport(split_name, str(root))
            if root == path or split_name == "train":
                training.append(split)
                trained_on.append((sr, "val" not in (split_folders(path) or {})))
            report.splits.append(sr)
            these.append(sr)
            listed = set(split.paths)
            for p in _other_files(root, listed):
                report.issues.append(Issue("warning", "other-file", p, "not an image file; training ignores it"))
            unique = list(dict.fromkeys(split.paths))  # a file listed on many rows is read once
            with ThreadPoolExecutor(max_workers=max(1, os.cpu_count() or 1)) as pool:  # Pillow decodes without the GIL
                inspected = dict(zip(unique, pool.map(_inspect, unique)))
            results = [inspected[p] for p in split.paths]
            reported: set[str] = set()  # files already reported on: a file's findings are said once
            counts, sizes, modes, pairs, cardinality = Counter(), Counter(), Counter(), Counter(), Counter()
            unusual: dict[str, list[str]] = defaultdict(list)  # mode -> its files
            for p, target, (digest, size, mode, problem) in zip(split.paths, split.targets, results):
                names = names_of(target, split.classes) if split.multi else [split.classes[target]]
                label = "|".join(names)  # a multi-label image's set of classes: the same image twice must match it
                if problem:
                    if p not in reported:
                        reported.add(p)
                        kind, detail = problem.split(": ", 1)
                        report.issues.append(Issue("error", kind, p,
                                                   detail + "; training skips it (--bad-images skip)"))
                    continue
                counts.update(names)
                cardinality[len(names)] += 1
                pairs.update(f"{a} + {b}" for i, a in enumerate(names) for b in names[i + 1:])
                sizes[f"{size[0]}x{size[1]}"] += 1
                modes[mode] += 1
                seen[digest].append((split_name, p, label))
                if p in reported:
                    continue
                reported.add(p)
                if mode not in USUAL_MODES:
                    unusual[mode].append(p)
                if min(size) < MIN_SIDE or max(size) / max(1, min(size)) > MAX_ASPECT:
                    report.issues.append(Issue("warning", "size", p, f"{size[0]}x{size[1]} pixels: very small or "
                                               "elongated; it is resized to a square"))
            for mode, files in sorted(unusual.items(), key=lambda m: -len(m[1])):  # one finding per mode, not per file
                report.issues.append(Issue("warning", "mode", str(root),
                                           _mode_summary(mode, files, sum(counts.values()), root)))
            sr.images = sum(cardinality.values())
            if split.multi:
                sr.multi_label, sr.no_label, sr.pairs = True, cardinality.get(0, 0), dict(pairs.most_common(10))
                sr.cardinality = sum(k * n for k, n in cardinality.items()) / max(1, sr.images)
                sr.most_labels = max(cardinality, default=0)
            sr.classes = {c: counts.get(c, 0) for c in split.classes}
            present = [n for n in sr.classes.values() if n]
            sr.imbalance = max(present) / min(present) if present else None
            sr.sizes, sr.modes = dict(sizes.most_common()), dict(modes.most_common())
            if sr.imbalance and sr.imbalance > IMBALANCE_WARN:
                report.issues.append(Issue("warning", "imbalance", str(root), f"largest class has {sr.imbalance:.1f}x "
                                           "the images of the smallest; "
                                           + ("consider --loss asl" if split.multi else "see the --balance line above")))
            empty = [c for c, n in sr.classes.items() if n == 0]
            if empty:
                report.issues.append(Issue("error", "empty-class", str(root), f"no readable images for {', '.join(empty)}"))
        _few_validation_images(report, these)
    if training and not any(i.kind == "layout" for i in report.issues):
        try:
            require_two_classes(concat_splits(training) if len(training) > 1 else training[0])
        except TuduiError as e:
            report.issues.append(Issue("error", "one-class", " + ".join(s.origin for s in training), str(e)))
    _duplicates(report, seen)
    report.balance = _recommend_balance(trained_on)
    return report


def _recommend_balance(trained_on: list[tuple[SplitReport, bool]]) -> dict | None:
    """The --balance mode for the readable training images of all paths together, less the --val-split hold-out
    where a path has no val/ folder (what --balance auto picks from the same counts: data/sampler.auto_balance), and
    why; None without readable training images of two classes, and for multi-label data (--balance weighs classes of
    one label per image; the imbalance warning points such data to --loss asl)."""
    if any(sr.multi_label for sr, _ in trained_on):
        return None
    counts: Counter = Counter()
    held = any(h for _, h in trained_on)
    for sr, held_out in trained_on:
        n = np.array(list(sr.classes.values()), dtype=np.int64)
        if held_out and n.sum():  # the stratified hold-out's counts (split.stratified_split: any seed, same counts)
            keep, _ = stratified_split(np.repeat(np.arange(len(n)), n), VAL_SPLIT, 0)
            n = np.bincount(np.repeat(np.arange(len(n)), n)[keep], minlength=len(n))
        counts.update(dict(zip(sr.classes, n.tolist())))
    if len([n for n in counts.values() if n]) < 2:
        return None
    ratio = imbalance_ratio(list(counts.values()))
    mode, _ = auto_balance(list(counts.values()))
    out = f" once --val-split {VAL_SPLIT:g} holds images out" if held else ""
    if mode == "none":
        return {"mode": mode, "why": f"the training classes' sizes are within {ratio:.1f}x of each other{out}, at "
                                     f"most {LONG_TAILED:g}: close enough for plain training"}
    size = f"the largest training class has {ratio:.1f}x the images of the smallest{out}"
    return {"mode": mode, "why": f"{size}, over {LONG_TAILED:g}: adding the log class priors to the logits in "
                                 "training repeats no image (sampler draws the rare ones again and again) and keeps "
                                 "the loss's scale (loss weights their gradients by up to the ratio); best.pt by "
                                 "balanced accuracy (--best-by auto), which counts every class alike"}


def _few_validation_images(report: CheckReport, splits: list[SplitReport]) -> None:
    """A warning for a path whose validation split has fewer than MIN_VAL_PER_CLASS images of some class: its val/
    folder's, else the --val-split hold-out of its training images (stratified, about 10% of each class)."""
    val = next((s for s in splits if s.name == "val"), None)
    if val is None:
        train = next((s for s in splits if s.name == "train"), splits[0] if len(splits) == 1 else None)
        if train is None or not train.classes:
            return
        held = {c: round(n * VAL_SPLIT) for c, n in train.classes.items() if n}
        where = f"the --val-split {VAL_SPLIT:g} hold-out gives"
    else:
        held, where = {c: n for c, n in val.classes.items() if n}, "val/ has"
    few = sorted((n, c) for c, n in held.items() if n < MIN_VAL_PER_CLASS)
    if few:
        n, c = few[0]
        report.issues.append(Issue("warning", "few-val", (val or train).root,
                                   f"{where} {len(few)} class(es) fewer than {MIN_VAL_PER_CLASS} validation images "
                                   f"({c}: {n}): too few to rank epochs by top-1; best.pt will be the last epoch "
                                   "(--best-by auto; on long-tailed data the epoch of the best balanced accuracy)"))


def _duplicates(report: CheckReport, seen: dict[str, list[tuple[str, str, str]]]) -> None:
    for copies in seen.values():
        if len(copies) < 2:
            continue
        listed = Counter(copies)  # a file named on several rows of one split (with one label) is one entry
        for (split_name, p, label), n in listed.items():
            if n > 1:
                report.issues.append(Issue("warning", "duplicate", p, f"listed {n:,} times in {split_name} "
                                           "(training uses each listing: it counts this image more than once)"))
        distinct = list(listed)
        first_split, first, first_label = distinct[0]
        for split_name, p, label in distinct[1:]:
            same = "the same file as" if os.path.realpath(p) == os.path.realpath(first) else "same image as"
            if label != first_label:
                report.issues.append(Issue("error", "conflicting-labels", p,
                                           f"{same} {first} but labelled {label} rather than {first_label}"))
            elif split_name != first_split and "train" in (split_name, first_split):
                report.issues.append(Issue("error", "leak", p, f"{same} {first} ({first_split}): "
                                           f"{split_name} data leaks into training, inflating its scores"))
            elif split_name != first_split:
                report.issues.append(Issue("warning", "duplicate", p, f"{same} {first} ({first_split})"))
            else:
                report.issues.append(Issue("warning", "duplicate", p, f"{same} {first} in {split_name}"))


def _summarised(items: list[Issue]) -> list[list[str]]:
    """Table rows: the first SHOWN_PER_KIND findings of each kind (kinds in order of first appearance), then one
    row counting the rest of that kind."""
    by_kind: dict[str, list[Issue]] = {}
    for i in items:
        by_kind.setdefault(i.kind, []).append(i)
    rows = []
    for kind, group in by_kind.items():
        rows += [[i.kind, i.path, i.detail] for i in group[:SHOWN_PER_KIND]]
        if len(group) > SHOWN_PER_KIND:
            rows.append([kind, f"... and {len(group) - SHOWN_PER_KIND:,} more", "--json lists every one"])
    return rows


def format_report(report: CheckReport) -> str:
    lines = []
    for s in report.splits:
        counts = s.classes
        lo = min(counts, key=counts.get) if counts else "-"
        hi = max(counts, key=counts.get) if counts else "-"
        size = next(iter(s.sizes), "-")
        if not s.imbalance:
            lines.append(f"{s.name} ({s.root}): no readable images")
        elif len(set(counts.values())) == 1:
            lines.append(f"{s.name} ({s.root}): {s.images:,} readable images, {len(counts)} "
                         + (f"classes; all classes have {counts[hi]:,} images" if len(counts) > 1 else
                            f"class ({hi})"))
        else:
            lines.append(f"{s.name} ({s.root}): {s.images:,} readable images, {len(counts)} classes; largest {hi} "
                         f"({counts[hi]:,}), smallest {lo} ({counts[lo]:,}), imbalance ratio {s.imbalance:.2f}")
        lines.append(f"  most common size {size} ({len(s.sizes)} distinct), modes "
                     + ", ".join(f"{m} {n}" for m, n in s.modes.items()))
        if s.multi_label:
            lines.append(f"  multi-label: {s.cardinality:.2f} labels per image on average (at most {s.most_labels}), "
                         f"{s.no_label:,} image(s) with no label"
                         + ("; most frequent together: " + ", ".join(f"{p} ({n:,})" for p, n in s.pairs.items())
                            if s.pairs else ""))
        lines.append(table(["class", "images"], [[c, n] for c, n in counts.items()]))
        lines.append("")
    if report.balance:
        lines.append(f"--balance {report.balance['mode']} recommended (what --balance auto picks): "
                     f"{report.balance['why']}")
        lines.append("")
    for title, items in (("errors", report.errors), ("warnings", report.warnings)):
        if items:
            lines.append(f"{title} ({len(items)}):")
            lines.append(table(["kind", "file", "detail"], _summarised(items), "<<<"))
            lines.append("")
    lines.append(f"{len(report.errors)} error(s), {len(report.warnings)} warning(s)")
    return "\n".join(lines)


def _mode_summary(mode: str, files: list[str], images: int, root: Path) -> str:
    """'103 of 121 images are RGBA (RGB with transparency): the alpha channel is dropped ...; e.g. a/1.png, ...'."""
    what, done = MODE_NOTES.get(mode, ("", "converted to RGB or grey"))
    examples = ", ".join(os.path.relpath(f, root) if root.is_dir() else f for f in files[:EXAMPLES])
    return (f"{len(files):,} of {images:,} images are {mode}" + (f" ({what})" if what else "")
            + f": {done} when they are read; e.g. {examples}" + (", ..." if len(files) > EXAMPLES else ""))
