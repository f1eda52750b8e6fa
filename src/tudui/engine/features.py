"""Head training from cached backbone features (`--freeze-backbone`, the first `--fine-tune N` epochs).

With the backbone frozen (and in eval mode: engine/finetune.py) its output for one augmented image never changes,
so running it on every image every epoch repeats the same work. Here it runs once per *view*: view v is the whole
training set augmented with its own seeded generator and passed through the model with a hook that keeps what
enters the head (the last nn.Linear), (N, D) float32. Epoch e < K computes view e and trains the head on it, in the
order the image path would take (MemoryLoader's seeded shuffle); later epochs draw, for every image, the features
of one of the K views at random (seeded by the epoch). An epoch after the first K costs the head's own arithmetic:
for resnet18 a (B, 512) x (512, K) product per batch instead of 1.8 G multiply-adds per image. An epoch's features
reach the trainer as a Feed (engine/step.py): `train_one_epoch` runs them through the same loop as images.

Validation features are computed once too (with the mirror's for flip TTA), so the head is validated every epoch
without a backbone pass. Each view's generator is seeded by (seed, view) and each epoch's draws by (seed, epoch),
so a resumed run recomputes the same features and continues exactly.

With no augmentation every view is the same, K is 1, and training equals the image path's within floating-point
tolerance (the same batches, the same order, BatchNorm in eval mode on both; tests/engine/test_features.py). A
multi-label model's (N, K) multi-hot targets travel with the features as class indices do; its validation scores
every cached image at once (mAP, thresholds: engine/multilabel.py), as its image path does.

Cached features are not used (the image path runs as before, a note says why) under torchrun, with mixup/cutmix
(which blend images, not features), or for a model whose output is not its last Linear's.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.console import Progress
from ..core.device import autocast
from ..core.modes import AUGMENTS
from ..data import epoch_order, make_loader, eval_batch_size
from .finetune import frozen_phase, set_frozen_modes
from .metrics import add_counts, batch_counts, compute_metrics
from ..models.surgery import head_path
from .multilabel import plain_bce, summarize
from .step import EagerStep, Feed, plain_cross_entropy


class HeadInput:
    """A forward pre-hook on the head that keeps its input: model(x) then leaves the features in `.value`."""

    def __init__(self, head: nn.Module) -> None:
        self.value: torch.Tensor | None = None
        self.handle = head.register_forward_pre_hook(self._keep)

    def _keep(self, module, args) -> None:
        self.value = args[0]

    def remove(self) -> None:
        self.handle.remove()


def unusable_reason(run) -> str | None:
    """Why the head cannot train from cached features for this run, or None when it can."""
    cfg = run.cfg
    if run.world.enabled:
        return "under torchrun each process runs the backbone on its own shard"
    if cfg.mixup > 0 or cfg.cutmix > 0:
        return "--mixup/--cutmix blend images, which cached features cannot"
    head = run.model.get_submodule(head_path(run.model))
    if not isinstance(head, nn.Linear):
        return "the model's head is not an nn.Linear"
    x = torch.zeros(2, run.spec.channels, run.spec.img_size, run.spec.img_size, device=run.device)
    x[1] = 1.0
    hook = HeadInput(head)
    was = run.model.training
    try:
        with torch.no_grad():
            out = run.model.eval()(x)
            feats = hook.value
            same = feats is not None and feats.dim() == 2 and torch.allclose(head(feats), out, rtol=1e-4, atol=1e-5)
    finally:
        hook.remove()
        run.model.train(was)
    return None if same else "the model's output is not its last Linear's output"


class FeatureTrainer:
    """The head of `run.model` on cached features: `feed` and `evaluate` stand in for the image path's loader and
    validation."""

    def __init__(self, run, views: int) -> None:
        self.run = run
        cfg = run.cfg
        self.head_name = head_path(run.model)
        self.views: list[torch.Tensor] = []  # each (N, D) float32 on the device
        self.max_views = views if self.augmenting(run) else 1
        self.val_feats: tuple[torch.Tensor, torch.Tensor | None, torch.Tensor] | None = None  # (F, F of mirror, y)
        # (N,) class indices, or (N, K) multi-hot rows for a multi-label model
        self.targets = torch.from_numpy(run.data.train.targets).to(run.device)
        self.first_batch: tuple[torch.Tensor, torch.Tensor] | None = None  # images the callbacks are shown
        self.batch_size = cfg.batch_size
        self.seed = cfg.seed

    @staticmethod
    def augmenting(run) -> bool:
        """Whether views differ: some random augmentation is on for training."""
        cfg, spec, augment = run.cfg, run.spec, run.data.augment  # augment: --augment auto resolved
        if cfg.overfit_batches:
            return False
        return AUGMENTS[augment].is_random(spec.hflip) or cfg.erase > 0

    # --- features ------------------------------------------------------------------------------------------------
    def _sequential_loader(self, split, layout, in_memory: bool):
        run = self.run
        return make_loader(split, run.spec, eval_batch_size(run.cfg.batch_size), False, run.device,
                           workers=run.workers, bad_images=run.cfg.bad_images, layout=layout, in_memory=in_memory)

    @torch.no_grad()
    def _features(self, loader, prepare, desc: str, amp: str | bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, D) float32 features and (N,) targets ((N, K) multi-hot) of every batch of `loader` (in its order) after
        `prepare`, the
        backbone run under autocast of `amp` (the run's --amp for training views, off for validation's).

        The first prepared images (up to 32) are kept for the callbacks (TensorBoard's and the pictures' first
        training batch), which are shown what the head's features came from."""
        run = self.run
        model = run.model
        set_frozen_modes(model, self.head_name)
        hook = HeadInput(model.get_submodule(self.head_name))
        feats, ys = [], []
        progress = Progress(len(loader), desc, enabled=run.world.rank == 0)
        try:
            for x, y in loader:
                x = prepare(x.to(run.device, non_blocking=True))
                if self.first_batch is None:
                    self.first_batch = (x[:32], y[:32].to(run.device))
                with autocast(run.device, amp):
                    model(x)
                feats.append(hook.value.float())
                ys.append(y.to(run.device))
                progress.update(1)
        finally:
            hook.remove()
            progress.close()
        return torch.cat(feats), torch.cat(ys)

    def _view_prepare(self, view: int):
        """The training augmentation with view `view`'s own generator; keeps the first batch for the callbacks."""
        run = self.run
        g = torch.Generator(device=run.device).manual_seed(self.seed * 1_000_003 + 7_919 * (view + 1))

        def prepare(x: torch.Tensor) -> torch.Tensor:
            saved, run.aug_generator = run.aug_generator, g
            try:
                out = run.prepare(x, train=True)
            finally:
                run.aug_generator = saved
            return out
        return prepare

    def ensure_views(self, count: int) -> None:
        """Compute views until there are `count` (at most max_views)."""
        run = self.run
        while len(self.views) < min(count, self.max_views):
            v = len(self.views)
            loader = self._sequential_loader(run.data.train, run.data.train_layout, run.data.in_memory)
            feats, ys = self._features(loader, self._view_prepare(v),
                                       f"backbone features, view {v + 1}/{self.max_views}", run.cfg.amp)
            # the labels as loaded: a file that became unreadable is replaced by the next readable one, with its own
            # label (data/loaders.py), the same way in every view
            self.targets = ys
            self.views.append(feats)

    def ensure_val(self) -> None:
        run = self.run
        if self.val_feats is not None or run.data.val is None:
            return
        loader = self._sequential_loader(run.data.val, None, run.data.in_memory)
        # in full precision, as every evaluation of a run is (trainer.validate)
        feats, ys = self._features(loader, lambda x: run.prepare(x, train=False), "backbone features, val", "off")
        mirror = None
        if run.spec.flip_tta:
            mirror, _ = self._features(loader, lambda x: run.prepare(x, train=False).flip(3),
                                       "backbone features, val mirrored", "off")
        self.val_feats = (feats, mirror, ys)

    # --- an epoch's training input and its validation -----------------------------------------------------------------
    def _order(self, epoch: int) -> torch.Tensor:
        """MemoryLoader's training order for `epoch` (the same seeded permutation, or --balance sampler's draw, that
        the image path uses: data/sampler.py)."""
        loader = self.run.train_loader
        weights = getattr(loader, "weights", getattr(getattr(loader, "sampler", None), "weights", None))
        return epoch_order(len(self.targets), self.seed, epoch, weights)

    def feed(self, epoch: int) -> Feed:
        """Epoch `epoch`'s training input for the trainer's loop (engine/trainer.py train_one_epoch): batches of
        (B, D) features and (B,) targets ((B, K) multi-hot) in the image path's order, stepped through the head
        alone."""
        run, cfg, dev = self.run, self.run.cfg, self.run.device
        self.ensure_views(epoch + 1)
        head = run.model.get_submodule(self.head_name)
        set_frozen_modes(run.model, self.head_name)
        n = len(self.targets)
        order = self._order(epoch).to(dev)
        if epoch < self.max_views:
            feats = self.views[epoch]
            pick = None
        else:  # every image its own view, drawn per epoch
            g = torch.Generator().manual_seed(self.seed * 7_919 + epoch)
            pick = torch.randint(0, len(self.views), (n,), generator=g).to(dev)
            feats = torch.stack(self.views)  # (K, N, D)
        bs = self.batch_size
        stop = n - n % bs if n >= bs else n  # whole batches, as the training loader drops the last partial one
        batches = [order[s:s + bs] for s in range(0, stop, bs)]

        def features():
            for idx in batches:
                yield (feats[idx] if pick is None else feats[pick[idx], idx]), self.targets[idx]  # (B, D), (B,)
        measure = plain_bce if run.spec.multi_label else plain_cross_entropy  # as the image path's step measures
        step = EagerStep(head, run.criterion, dev, cfg.amp, run.scaler.scale, cfg.accumulate, measure)
        return Feed(features(), len(batches), step, f"epoch {epoch + 1}/{cfg.epochs} (head on cached features)",
                    shown=self.first_batch)  # set by the first view's pass

    @torch.no_grad()
    def evaluate(self, model: nn.Module, criterion: nn.Module) -> dict | None:
        """Validation metrics of `model`'s head on the cached validation features (flip TTA: the mirror's too), in
        full precision like every evaluation of a run (trainer.validate)."""
        run = self.run
        if run.data.val is None:
            return None
        self.ensure_val()
        feats, mirror, ys = self.val_feats
        head = model.get_submodule(self.head_name)
        k = run.spec.num_classes
        total, every = None, []
        for s in range(0, len(ys), eval_batch_size(run.cfg.batch_size)):
            sl = slice(s, s + eval_batch_size(run.cfg.batch_size))
            logits = head(feats[sl])
            if mirror is not None:
                logits = (logits + head(mirror[sl])) / 2
            if run.spec.multi_label:  # scored as a whole below: average precision needs every image's score
                every.append(logits.float().cpu())
                continue
            counts = batch_counts(logits, ys[sl], k)
            counts["loss_sum"] = criterion(logits, ys[sl]).to(torch.float64) * len(ys[sl])
            total = add_counts(total, counts)
        if run.spec.multi_label:  # mAP, F1s, exact match at thresholds chosen here, as evaluate_multilabel does
            return summarize(torch.cat(every) if every else torch.zeros(0, k), ys.float().cpu(), run.spec,
                             run.cfg.threshold)
        return compute_metrics(total)


def maybe_feature_trainer(run) -> FeatureTrainer | None:
    """A FeatureTrainer when the run has a frozen phase and cached features work for it (else a note why not)."""
    cfg = run.cfg
    if not (cfg.freeze_backbone or cfg.fine_tune):
        return None
    reason = unusable_reason(run)
    if reason is not None:
        if run.world.rank == 0:
            print(f"note: the head trains on images, not cached features: {reason}", flush=True)
        return None
    return FeatureTrainer(run, cfg.feature_views)


def active(trainer: FeatureTrainer | None, run, epoch: int) -> bool:
    return trainer is not None and frozen_phase(run.cfg, epoch)


__all__ = ["FeatureTrainer", "HeadInput", "maybe_feature_trainer", "active", "unusable_reason"]
