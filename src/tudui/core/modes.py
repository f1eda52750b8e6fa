"""The named modes of tudui's string switches, each defined once: --augment, --loss, --balance, --scheduler,
--optimizer.

A row says what its mode does (as data) and how `--help` describes it. The config's choices and help text
(core/config.py) and the code that acts on a mode read the same row: the training batches (engine/trainer.py
`Run.prepare`, data/transforms.py `augment_options`), the cached-feature views (engine/features.py), the run's first
line, the loss and optimiser factories (engine/optim.py). The rows live in core, below everything that reads them,
so `tudui --help` lists them without importing torch.

A new augmentation: a row in AUGMENTS (and, if it is a new kind of operation, its batch function in
data/augment.py, called from `Run.prepare`). A new loss: a row in LOSSES and its builder in engine/optim.LOSSES.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class AugmentMode:
    """What an --augment mode does to each training batch (data/augment.py, data/transforms.py)."""

    help: str
    crop: bool = False  # random translation, zero padding of 1/8 of the side (DataSpec.pad)
    flip: bool = False  # random horizontal flips, where the data allows them (DataSpec.hflip)
    photo: bool = False  # random-resized-crop (+ flip, rotation, colour jitter): data/augment.resized_crop_batch
    policy: str | None = None  # per-image random operations after the flip: data/augment.policy_batch's policy

    def is_random(self, hflip: bool) -> bool:
        """Whether two passes over the same images differ (with flips allowed or not by the data)."""
        return self.crop or self.photo or self.policy is not None or (self.flip and hflip)

    def without_flip(self) -> str | None:
        """The mode this one amounts to on data whose labels forbid flips (crop-flip -> crop); None if no other."""
        if not self.flip or self.photo or self.policy:
            return None
        same = (self.crop, False, False, None)
        return next(name for name, m in AUGMENTS.items() if (m.crop, m.flip, m.photo, m.policy) == same)


AUGMENTS: dict[str, AugmentMode] = {
    "photo": AugmentMode("random-resized-crop + flip, each image its own crop; see --crop-scale, --rotate, "
                         "--color-jitter", photo=True, flip=True),
    "flip": AugmentMode("horizontal", flip=True),
    "crop-flip": AugmentMode("random crop with zero padding of 1/8 of the side + flip", crop=True, flip=True),
    "crop": AugmentMode("random crop with zero padding, no flip", crop=True),
    "none": AugmentMode("as the images are"),
    "randaugment": AugmentMode("flip plus two per-image random operations at a fixed magnitude: rotate, shear, "
                               "translate, brightness, ...", flip=True, policy="randaugment"),
    "trivialaugment": AugmentMode("flip plus one per-image random operation at a random magnitude", flip=True,
                                  policy="trivialaugment"),
}
AUTO_AUGMENT = {True: "photo", False: "flip"}  # --augment auto: RGB photos at least the training size -> photo


def augment_mode(name: str) -> AugmentMode:
    """The row of a resolved --augment name (not 'auto')."""
    return AUGMENTS[name]


# name -> `--help` text; the builders are engine/optim.py's LOSSES (a test checks both list the same names)
LOSSES: dict[str, str] = {
    "cross-entropy": "softmax cross-entropy (with --label-smoothing)",
    "nll": "log-softmax + negative log-likelihood",
    "mse": "mean squared error of the probabilities against one-hot targets",
    "l1": "mean absolute error of the probabilities against one-hot targets",
    "asl": "multi-label only: asymmetric loss, easy negatives down-weighted (many absent classes per image)",
}
# --balance: what evens out unequal classes in training (data/sampler.py, engine/optim.create_loss); auto picks by
# the training set's imbalance ratio (data/sampler.auto_balance)
BALANCES: dict[str, str] = {
    "none": "every image once an epoch, every class as it comes",
    "sampler": "each epoch's images drawn with replacement, rare classes more often (--sampler-weights)",
    "loss": "the loss weighted by inverse class frequency",
    "logit-adjust": "the log class priors (x --logit-tau) added to the logits in training, so the model learns "
                    "what the priors do not explain (Menon et al. 2021)",
}

OPTIMIZERS: dict[str, str] = {
    "sgd": "SGD with Nesterov momentum",
    "adam": "Adam",
    "adamw": "AdamW (decoupled weight decay)",
}
# the learning-rate curves: engine/optim.create_scheduler
SCHEDULERS: dict[str, str] = {
    "none": "constant (after any warm-up)",
    "step": "times --gamma every --step-size epochs",
    "cosine": "half a cosine to zero",
    "onecycle": "linear warm-up from lr/25, then linear decay to ~0",
}


def describe_modes(table: dict) -> str:
    """'a (what a does), b (what b does), ...' for a --help text."""
    return ", ".join(f"{name} ({row if isinstance(row, str) else row.help})" for name, row in table.items())


# `tudui explain --method`: name -> the library's class of that name (engine/cam.py builds it): pytorch-grad-cam's,
# read from a layer, and Captum's Occlusion (INPUT_METHODS), which perturbs the input instead
CAM_METHODS: dict[str, str] = {
    "gradcam": "GradCAM",
    "gradcam++": "GradCAMPlusPlus",
    "layercam": "LayerCAM",
    "eigencam": "EigenCAM",
    "scorecam": "ScoreCAM",
    "occlusion": "Occlusion",
}
INPUT_METHODS = ("occlusion",)  # maps of the input itself: no layer is read, --layer does not apply

# `tudui serve --runtime`: what runs the forward pass of a PyTorch model (a checkpoint or safetensors):
# inference/runtime.py
SERVE_RUNTIMES: dict[str, str] = {
    "auto": "ONNX Runtime on a CPU where it is installed and the model exports with the same logits, else PyTorch",
    "onnxruntime": "ONNX Runtime on the CPU; an error where the model cannot be exported with the same logits",
    "torch": "PyTorch, as the model was trained",
}

# `--score`: what "unknown" is decided on (engine/rejection.py)
REJECT_SCORES: dict[str, str] = {
    "msp": "the top softmax probability (calibrated)",
    "energy": "the logsumexp of the calibrated logits (higher: more like the training images)",
}
