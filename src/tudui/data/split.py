"""The in-between form of every dataset: class names, targets, and pixels or paths."""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

import numpy as np

from ..core.errors import TuduiError


@dataclass
class Split:
    """One split (train, val or test) of a dataset.

    Exactly one of `images` or `paths` is set: named datasets arrive decoded,
    folders arrive as file paths and are decoded later.
    """

    classes: list[str]
    targets: np.ndarray  # (N,) int64 indices into `classes`; multi-label: (N, K) float32 multi-hot (data/labels.py)
    images: np.ndarray | None = None  # (N, H, W, C) uint8
    paths: list[str] | None = None
    origin: str = ""  # where it came from, for messages
    dropped: list[str] = field(default_factory=list)  # unreadable files left out

    def __len__(self) -> int:
        return len(self.targets)

    def subset(self, index: np.ndarray) -> "Split":
        return Split(
            classes=self.classes,
            targets=self.targets[index],
            images=None if self.images is None else self.images[index],
            paths=None if self.paths is None else [self.paths[i] for i in index],
            origin=self.origin,
            dropped=self.dropped,
        )

    @property
    def multi(self) -> bool:
        """Whether this split is multi-label (several or no classes per image)."""
        return self.targets.ndim == 2

    def counts(self) -> np.ndarray:
        """Images per class (multi-label: images carrying each class)."""
        if self.multi:
            return (self.targets > 0.5).sum(0).astype(np.int64)
        return np.bincount(self.targets, minlength=len(self.classes))

    def reindex(self, classes: list[str]) -> "Split":
        """This split with targets renumbered to `classes` (the training or the model's class order), in place.

        A class of this split that `classes` lacks is an error: the model cannot predict it.
        """
        if self.classes == list(classes):
            return self
        # Compared in NFC, as folders.class_name reads them: a model trained on 'café' as macOS spells it (NFD, before
        # folder names were normalised) still knows the class
        index = {unicodedata.normalize("NFC", c): i for i, c in enumerate(classes)}
        unknown = sorted(c for c in self.classes if unicodedata.normalize("NFC", c) not in index)
        if unknown:
            raise TuduiError(f"{self.origin or 'the data'} has classes the model does not know: "
                             f"{', '.join(unknown[:10])}; the known classes are: {', '.join(list(classes)[:20])}")
        mine = [index[unicodedata.normalize("NFC", c)] for c in self.classes]
        if self.multi:  # the columns moved to the model's order, classes this split lacks as zeros
            hot = np.zeros((len(self), len(classes)), dtype=np.float32)
            hot[:, mine] = self.targets
            self.targets = hot
        else:
            self.targets = np.array([mine[t] for t in self.targets], dtype=np.int64)
        self.classes = list(classes)
        return self


def require_two_classes(split: Split) -> None:
    """Refuse training data with images of fewer than two classes (`tudui train` and `tudui data check` alike)."""
    present = [c for c, n in zip(split.classes, split.counts()) if n]
    if len(present) < 2:
        raise TuduiError(f"the training data ({split.origin}) has only one class"
                         + (f" ({present[0]})" if present else "") + f"; a classifier needs at least two: "
                         + _one_class_hint(split))


def _one_class_hint(split: Split) -> str:
    """Where the labels of a one-class split would have to change, in the words of where it came from."""
    if split.paths and not isinstance(split.paths[0], str):  # DatasetItems: the user's own Dataset
        return "every item your Dataset returns has the same label; its (image, label) pairs need two or more"
    if split.origin.lower().endswith(".csv"):
        return "the CSV's label column holds one value; it needs two or more"
    if split.paths:
        return ("one subfolder per class (root/ants/*.jpg, root/bees/*.jpg), or one folder per class "
                "(--data ants bees)")
    return "its labels hold one value"


def stratified_split(targets: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (keep, held_out): `fraction` of every class held out, seeded.

    A class with at least 2 samples gives at least one to each side. Multi-hot targets (N, K) are stratified by
    each image's rarest class (images with no class as one more group), so a rare class reaches both sides.
    """
    if targets.ndim == 2:
        hot = targets > 0.5
        freq = np.where(hot, hot.sum(0)[None, :], np.iinfo(np.int64).max)
        targets = np.where(hot.any(1), freq.argmin(1), -1)
    rng = np.random.default_rng(seed)
    keep, held = [], []
    for c in np.unique(targets):
        idx = np.flatnonzero(targets == c)
        rng.shuffle(idx)
        n_held = int(round(len(idx) * fraction))
        if len(idx) >= 2:
            n_held = min(max(n_held, 1), len(idx) - 1)
        else:
            n_held = 0
        held.append(idx[:n_held])
        keep.append(idx[n_held:])
    return np.sort(np.concatenate(keep)), np.sort(np.concatenate(held))


def as_multi_hot(split: Split) -> Split:
    """A copy of `split` with multi-hot targets (N, K) float32 (a single-label split's as one-hot)."""
    hot = split.targets if split.multi else np.eye(len(split.classes), dtype=np.float32)[split.targets]
    return Split(list(split.classes), hot, split.images, split.paths, split.origin, split.dropped)


def concat_splits(splits: list[Split]) -> Split:
    """Concatenate splits (the course's `ants_dataset + bees_dataset`), merging class names.

    Class indices follow the sorted union of names, as torchvision's ImageFolder sorts them.
    """
    if len(splits) == 1:
        return splits[0]
    classes = sorted({c for s in splits for c in s.classes})
    index = {c: i for i, c in enumerate(classes)}
    if any(s.multi for s in splits):  # one multi-label part makes the whole multi-label
        targets = np.concatenate([as_multi_hot(s).reindex(classes).targets for s in splits])
    else:
        targets = np.concatenate([np.array([index[s.classes[t]] for t in s.targets], dtype=np.int64)
                                  for s in splits])
    origin = " + ".join(s.origin for s in splits)
    dropped = [p for s in splits for p in s.dropped]
    if all(s.paths is not None for s in splits):
        return Split(classes, targets, paths=[p for s in splits for p in s.paths], origin=origin, dropped=dropped)
    if all(s.images is not None for s in splits):
        shapes = {s.images.shape[1:] for s in splits}
        if len(shapes) > 1:
            raise TuduiError(f"cannot concatenate datasets with different image shapes {sorted(shapes)}; "
                             "train on them separately or convert them to image folders")
        return Split(classes, targets, images=np.concatenate([s.images for s in splits]), origin=origin)
    raise TuduiError("cannot concatenate a named dataset with image folders; "
                     "write the named one out with `tudui data export` first")
