"""Calibrated probabilities: one temperature T fitted on the validation split (temperature scaling, Guo et al. 2017).

The logits are divided by T before the softmax: T > 1 softens over-confident probabilities, T < 1 sharpens
under-confident ones (label smoothing), and the top class never changes, so accuracy does not either. T minimises the
validation negative log-likelihood; it is fitted by L-BFGS on log T (T stays positive, and the NLL is smooth in it).
A training run fits it at the end (`--calibrate on`), `tudui calibrate` fits it for an older checkpoint; it is stored
as the checkpoint's `temperature` and in every export's metadata, and whatever predicts divides by it.

The expected calibration error (ECE) is the gap between confidence and accuracy, averaged over ECE_BINS equal-width
bins of the top probability, each weighted by its share of the images.

A multi-label model (a sigmoid per class) gets one temperature per class instead: T_c minimises class c's binary
negative log-likelihood on the validation split, each class on its own, and the probabilities are sigmoid(z_c / T_c).
Each class's probability is an increasing function of its logit either way, so its ranking (its average precision)
never changes. The checkpoint's `temperature` is then a list of K numbers, and the thresholds are chosen on (or, with
`--threshold`, applied to) the calibrated probabilities (engine/multilabel.py). A multi-label model's ECE treats
every (image, class) pair as one binary prediction: over ECE_BINS equal-width bins of the class's probability p,
|share of positives - mean p| weighted by the bin's share of all N x K pairs (scikit-learn's `calibration_curve`
bins); reliability.png draws those pooled bins.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..data import DataSpec, model_logits, normalize
from .rejection import tables

ECE_BINS = 15
# the range a multi-label class's temperature is searched in: a class that validation separates perfectly (few
# images, rare classes) has its NLL falling all the way to T -> 0, which would make every later probability 0 or 1
CLASS_T_RANGE = (0.05, 20.0)

Temperature = float | list[float]  # one for a softmax, one per class for a multi-label model's sigmoids


def scale(logits: torch.Tensor, temperature: Temperature | None) -> torch.Tensor:
    """(N, K) logits divided by the temperature: a number, or K numbers (a multi-label model's, one per class); None
    or 1 leaves them as they are."""
    if temperature is None:
        return logits
    if isinstance(temperature, (list, tuple)):
        return logits / torch.as_tensor(temperature, dtype=logits.dtype, device=logits.device)
    return logits if temperature == 1.0 else logits / temperature


class TemperatureScaled(nn.Module):
    """A model whose logits are divided by `temperature` (a number, or one per class)."""

    def __init__(self, model: nn.Module, temperature: Temperature) -> None:
        super().__init__()
        self.model = model
        self.temperature = [float(t) for t in temperature] if isinstance(temperature, (list, tuple)) \
            else float(temperature)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scale(self.model(x), self.temperature)


@torch.no_grad()
def collect_logits(model: nn.Module, loader, spec: DataSpec, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """((N, K) float32 logits, targets) of a loader's images, on the CPU (flip TTA as the spec says): (N,) int64
    class indices, or a multi-label model's (N, K) float32 multi-hot rows."""
    model.eval()
    logits, targets = [], []
    for raw, y in loader:
        logits.append(model_logits(model, normalize(raw.to(device), spec), spec).float().cpu())
        targets.append(y.cpu())
    if spec.multi_label:
        k = spec.num_classes
        return (torch.cat(logits), torch.cat(targets).float()) if logits else (torch.zeros(0, k), torch.zeros(0, k))
    if not logits:
        return torch.zeros(0, spec.num_classes), torch.zeros(0, dtype=torch.int64)
    return torch.cat(logits), torch.cat(targets).long()


def nll(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the targets under softmax(logits / temperature)."""
    return float(F.cross_entropy(logits.double() / temperature, targets))


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 200) -> float:
    """The T > 0 minimising nll(logits, targets, T): L-BFGS on log T from T = 1 (float64). 1 where the images
    cannot tell: none, or none misclassified (then the loss only falls as T falls to 0, which would make every later
    answer 100% sure because the few validation images were all right)."""
    z, y = logits.detach().double(), targets.long()
    if len(y) == 0 or bool((z.argmax(1) == y).all()):
        return 1.0
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, tolerance_grad=1e-10, tolerance_change=1e-12,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0


def reliability(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """Per bin of the top probability ((i/bins, (i+1)/bins], the first bin also holding 0): images, mean confidence,
    accuracy (NaN for an empty bin)."""
    conf, pred = probs.max(1)
    return _binned(conf, (pred == targets).double(), bins)


def _binned(conf: torch.Tensor, correct: torch.Tensor, bins: int) -> dict:
    """Per bin of `conf` (N,): count, mean conf, mean `correct` (N,) 0/1 (NaN for an empty bin)."""
    correct = correct.double()
    idx = (conf.double() * bins).ceil().long().clamp(1, bins) - 1
    count = torch.bincount(idx, minlength=bins).double()
    conf_sum = torch.bincount(idx, conf.double(), minlength=bins)
    acc_sum = torch.bincount(idx, correct, minlength=bins)
    safe = count.clamp(min=1)
    nan = torch.full_like(count, math.nan)
    return {"count": count.long().tolist(), "confidence": torch.where(count > 0, conf_sum / safe, nan).tolist(),
            "accuracy": torch.where(count > 0, acc_sum / safe, nan).tolist()}


def ece(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """Expected calibration error: sum over bins of (images in the bin / all) * |accuracy - mean confidence|."""
    return ece_of(reliability(probs, targets, bins))


def ece_of(r: dict) -> float:
    """The ECE of a reliability table: sum over bins of (count / all) * |accuracy - mean confidence|."""
    n = max(1, sum(r["count"]))
    return float(sum(c / n * abs(a - p) for c, a, p in zip(r["count"], r["accuracy"], r["confidence"]) if c))


# --- multi-label: one temperature per class ---------------------------------------------------------------------
def class_nll(logits: torch.Tensor, targets: torch.Tensor, temperature: Temperature | None = None) -> torch.Tensor:
    """(K,) float64: each class's mean binary negative log-likelihood of multi-hot `targets` (N, K) under
    sigmoid(logits / temperature) (a number or K numbers)."""
    z = scale(logits.double(), temperature)
    return F.binary_cross_entropy_with_logits(z, targets.double(), reduction="none").mean(0)


def fit_class_temperatures(logits: torch.Tensor, targets: torch.Tensor, steps: int = 80) -> list[float]:
    """Each class's T in CLASS_T_RANGE minimising its binary NLL (class_nll), all classes at once by golden-section
    search on log T. The NLL is convex in 1/T (a logistic loss of z / T), so it has one minimum along log T, which
    the search brackets until float64 NLLs stop differing (T to about 1e-7, relative). A class whose validation
    images are all positive or all negative, all on the right side of logit 0 (its NLL only falls as T falls, as in
    fit_temperature), or whose NLL the search does not lower (all its logits 0), keeps T = 1."""
    n, k = logits.shape
    if n == 0:
        return [1.0] * k
    z, y = logits.detach().double(), targets.detach().double()
    f = lambda log_t: F.binary_cross_entropy_with_logits(  # noqa: E731 - (K,) NLL at (K,) log T
        z / log_t.exp(), y, reduction="none").mean(0)
    lo = torch.full((k,), math.log(CLASS_T_RANGE[0]), dtype=torch.float64)
    hi = torch.full((k,), math.log(CLASS_T_RANGE[1]), dtype=torch.float64)
    g = (math.sqrt(5) - 1) / 2  # golden ratio: each step keeps 0.618 of the interval and reuses one point
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)  # lo < a < b < hi
    fa, fb = f(a), f(b)
    for _ in range(steps):
        left = fa <= fb  # the minimum lies in [lo, b] (else in [a, hi])
        lo, hi = torch.where(left, lo, a), torch.where(left, b, hi)
        p = torch.where(left, hi - g * (hi - lo), lo + g * (hi - lo))  # the one new point of each interval
        fp = f(p)
        a, b, fa, fb = (torch.where(left, p, b), torch.where(left, a, p),
                        torch.where(left, fp, fb), torch.where(left, fa, fp))
    log_t = (lo + hi) / 2
    t = log_t.exp()
    positives = (y > 0.5).sum(0)
    mistaken = ((z > 0) != (y > 0.5)).any(0)
    fitted = (positives > 0) & (positives < n) & mistaken & (f(log_t) < f(torch.zeros(k, dtype=torch.float64))) \
        & torch.isfinite(t)
    return [float(v) if keep else 1.0 for v, keep in zip(t.tolist(), fitted.tolist())]


def binary_reliability(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> dict:
    """A multi-label model's reliability table: every (image, class) pair of probabilities `probs` (N, K) binned by
    its probability ((i/bins, (i+1)/bins], the first bin also holding 0): pairs, mean probability ("confidence")
    and share of positives ("accuracy")."""
    return _binned(probs.reshape(-1).double(), (targets.reshape(-1) > 0.5).double(), bins)


def binary_ece(probs: torch.Tensor, targets: torch.Tensor, bins: int = ECE_BINS) -> float:
    """A multi-label model's ECE over all N x K (image, class) pairs: sum over bins of the class probability of
    (pairs in the bin / all pairs) * |share of positives - mean probability|."""
    return ece_of(binary_reliability(probs, targets, bins))


def multilabel_report(logits: torch.Tensor, targets: torch.Tensor, temperature: Temperature) -> dict:
    """calibration_report's figures for a multi-label model: ECE over (image, class) pairs and the mean binary NLL
    (over images and classes), before and after dividing by the per-class `temperature`."""
    before, after = logits.float().sigmoid(), scale(logits.float(), temperature).sigmoid()
    return {"n": len(targets), "ece_before": binary_ece(before, targets), "ece_after": binary_ece(after, targets),
            "nll_before": float(class_nll(logits, targets).mean()) if len(targets) else 0.0,
            "nll_after": float(class_nll(logits, targets, temperature).mean()) if len(targets) else 0.0,
            "reliability_before": binary_reliability(before, targets),
            "reliability_after": binary_reliability(after, targets)}


def calibration_report(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> dict:
    """ECE and NLL before and after dividing by `temperature`, with both reliability tables."""
    before, after = logits.float().softmax(1), (logits.float() / temperature).softmax(1)
    return {"n": len(targets), "ece_before": ece(before, targets), "ece_after": ece(after, targets),
            "nll_before": nll(logits, targets), "nll_after": nll(logits, targets, temperature),
            "reliability_before": reliability(before, targets), "reliability_after": reliability(after, targets)}


def calibrate(model: nn.Module, val_loader, spec: DataSpec, device: torch.device, test_loader=None) -> dict:
    """Fit the temperature on `val_loader`'s images: calibrate_logits of their logits (and of `test_loader`'s, for
    the test report)."""
    test = collect_logits(model, test_loader, spec, device) if test_loader is not None else None
    return calibrate_logits(collect_logits(model, val_loader, spec, device), test, spec.multi_label)


def calibrate_logits(val: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor] | None,
                     multi_label: bool = False) -> dict:
    """Fit the temperature on the validation (logits, targets) `val` (collect_logits' shapes); {"temperature",
    "val": report, "test": `test`'s report or None, "rejection": the scores' quantile tables (engine/rejection.py)}.
    A multi-label model: {"temperature": K numbers, "multi_label": True, "val", "test", "logits": `val`, which the
    thresholds are chosen on}. The logits may come from any pass over the splits (a training run's final evaluation
    keeps them: engine/evaluate.py's `kept`)."""
    logits, targets = val
    if multi_label:
        ts = fit_class_temperatures(logits, targets)
        return {"temperature": ts, "bins": ECE_BINS, "multi_label": True, "val": multilabel_report(logits, targets, ts),
                "test": multilabel_report(*test, ts) if test is not None else None, "logits": val}
    t = fit_temperature(logits, targets)
    return {"temperature": t, "bins": ECE_BINS, "val": calibration_report(logits, targets, t),
            "test": calibration_report(*test, t) if test is not None else None,
            "rejection": tables(logits, t)}  # each score's validation quantiles, for --reject auto
