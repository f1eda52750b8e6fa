""""Unknown": answering `unknown` for an image whose score is below a threshold (`--reject-below P`, `--reject auto`).

Two scores, each higher for an image more like the training data (both from the calibrated logits, z / T):
  msp     the top softmax probability (maximum softmax probability, Hendrycks & Gimpel 2017), in [0, 1];
  energy  logsumexp of the logits (the negative free energy, Liu et al. 2020), any real number.
`--reject auto --coverage C` takes the threshold that keeps a share C of the validation images: training (and
`tudui calibrate`) store a table of thresholds on each score's validation values with the model (QUANTILES + 1
values, the k-th keeping about (QUANTILES - k) / QUANTILES of the images), so any coverage is looked up later, in
predict, eval, serve and exports alike.
"""
from __future__ import annotations

import math

import torch

from ..core.errors import TuduiError
from ..core.modes import REJECT_SCORES

QUANTILES = 1000  # the stored tables' resolution: coverage in steps of 0.1%


def score(logits: torch.Tensor, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """(N, K) logits -> (N,) scores of `kind` ('msp' or 'energy') on the logits divided by `temperature`."""
    z = logits.float() / temperature
    if kind == "msp":
        return z.softmax(1).amax(1)
    if kind == "energy":
        return z.logsumexp(1)
    raise TuduiError(f"--score takes one of {', '.join(REJECT_SCORES)}, got {kind!r}")


def quantile_table(scores: torch.Tensor) -> list[float]:
    """QUANTILES + 1 thresholds on validation scores, lowest first: the k-th keeps the images from rank
    floor(k / QUANTILES * (n - 1)) up (ascending), and lies halfway between that image's score and the one below, so
    that the same images land on the same side when their scores are recomputed with float rounding's differences
    (another batch size, another device)."""
    if len(scores) == 0:
        return []
    s = scores.double().sort().values
    idx = (torch.arange(QUANTILES + 1, dtype=torch.float64) / QUANTILES * (len(s) - 1)).floor().long()
    below = torch.cat([s[:1] - 1e-6 * (1 + s[:1].abs()), s[:-1]])  # under the lowest: all images kept
    return ((s[idx] + below[idx]) / 2).tolist()


def tables(logits: torch.Tensor, temperature: float = 1.0) -> dict[str, list[float]]:
    """{score kind: its quantile table} on validation logits: what a model stores for `--reject auto`."""
    return {kind: quantile_table(score(logits, kind, temperature)) for kind in REJECT_SCORES}


def threshold(meta: dict, reject: str | None, reject_below: float | None, coverage: float, kind: str) -> float | None:
    """The threshold a command's options give: `reject_below` as given, or with reject='auto' the stored validation
    quantile that keeps `coverage` of the validation images; None when nothing is to be rejected."""
    if reject_below is not None and reject is not None:
        raise TuduiError("give --reject-below P or --reject auto, not both")
    if reject_below is not None:
        if kind == "msp" and not 0 <= reject_below <= 1:
            raise TuduiError(f"--reject-below is a top probability with --score msp and must be in [0, 1], "
                             f"got {reject_below}")
        if not math.isfinite(reject_below):
            raise TuduiError(f"--reject-below must be a finite number, got {reject_below}")
        return float(reject_below)
    if reject is None:
        return None
    table = (meta.get("rejection") or {}).get(kind)
    if not table:
        raise TuduiError("this model stores no validation scores for --reject auto (it was trained before tudui "
                         "stored them, or without validation data); run `tudui calibrate CHECKPOINT --data D` on "
                         "it (an export: on its checkpoint, then export again), or give --reject-below P")
    if not isinstance(table, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and math.isfinite(v) for v in table):
        raise TuduiError(f"this model's stored {kind} thresholds are not a list of numbers; run `tudui calibrate` on "
                         "it again")
    k = round((1 - coverage) * (len(table) - 1))
    return float(table[max(0, min(k, len(table) - 1))])


def accepted(logits: torch.Tensor, limit: float | None, kind: str, temperature: float = 1.0) -> torch.Tensor:
    """(N,) bool: the images whose score reaches `limit` (all of them without one)."""
    if limit is None:
        return torch.ones(len(logits), dtype=torch.bool)
    return score(logits, kind, temperature) >= limit


def rejection_report(logits: torch.Tensor, targets: torch.Tensor, limit: float, kind: str,
                     temperature: float = 1.0) -> dict:
    """What rejecting below `limit` does to a labelled split: the share rejected, top-1 on the accepted images
    (NaN when none is accepted) and on all of them."""
    keep = accepted(logits, limit, kind, temperature)
    right = logits.argmax(1) == targets
    n_keep = int(keep.sum())
    return {"score": kind, "threshold": limit, "n": len(targets), "rejected": 1 - n_keep / max(1, len(targets)),
            "accepted_top1": float(right[keep].double().mean()) if n_keep else math.nan,
            "top1": float(right.double().mean()) if len(targets) else math.nan}


def risk_coverage(logits: torch.Tensor, targets: torch.Tensor, kind: str = "msp", temperature: float = 1.0) -> dict:
    """The risk-coverage curve of a labelled split: for each distinct score s, from the highest down, the share of
    images whose score reaches s (what `--reject-below s` would accept) and top-1 on those images. Images of equal
    score are accepted together, so every point is one a threshold gives."""
    s = score(logits, kind, temperature).double()
    right = (logits.argmax(1) == targets).double()
    order = torch.argsort(s, descending=True, stable=True)
    s, right = s[order], right[order]
    last = torch.ones(len(s), dtype=torch.bool)
    last[:-1] = s[1:] != s[:-1]  # the last image of each group of equal scores
    kept = torch.arange(1, len(s) + 1, dtype=torch.float64)[last]
    return {"score": kind, "threshold": s[last].tolist(), "coverage": (kept / max(1, len(s))).tolist(),
            "accuracy": (right.cumsum(0)[last] / kept).tolist()}
