"""The model a training run starts from: `create_training_model(cfg, spec, device)`.

Where `registry.build_model` rebuilds the untrained model a checkpoint's `arch` describes, this builds it from what
a training config names: a registered name, 'file.py:Name', or (library) an nn.Module instance or a builder
callable; with its initial weights, on the device, checked with one dry forward pass, and with the `arch` record
every checkpoint of the run carries.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ..core.checkpoint import read_weights
from ..core.errors import TuduiError
from ..core.options import option_text
from ..core.pyfile import is_file_ref, skipped_hint
from .registry import create_model, get_model_info, make_arch
from .user import call_builder, parse_model_args, ref_for, source_record
from .summary import input_mismatch
from .timm_models import arch_name, instance_name, is_timm
from .zoo import ARCHITECTURES as ZOO, instance_name as zoo_instance_name
from .surgery import load_weights


def check_forward(model: nn.Module, spec, name: str, device: torch.device, hint: str) -> None:
    """One dry forward pass, so a size mismatch is a clear message before any work is done (spec: data.DataSpec):
    which layer, both sizes and the input that fits, as `tudui summary` reports it, with the options to train at it
    (flags on the command line, the library's keywords in a library call: core.options.option_text)."""
    x = torch.zeros(2, spec.channels, spec.img_size, spec.img_size, device=device)
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except (RuntimeError, ValueError, AssertionError) as e:  # torch's shape errors; timm asserts a ViT's patch grid
        found = input_mismatch(model, (spec.channels, spec.img_size, spec.img_size))  # as `tudui summary` says it
        if found is None:  # not a matter of shapes
            raise TuduiError(f"model {name} cannot take {spec.channels}x{spec.img_size}x{spec.img_size} input "
                             f"({(str(e).splitlines() or [type(e).__name__])[0]}); {hint}") from None
        why, fit = found
        if fit and fit[1] == fit[2]:
            change = ([option_text("channels", fit[0])] if fit[0] != spec.channels else []) + \
                ([option_text("img_size", fit[1])] if fit[1] != spec.img_size else [])
            hint = f"train with {' '.join(change)} (tudui converts the images to it), or change the model"
        raise TuduiError(f"model {name}: {why}; {hint}") from None
    except NameError as e:  # a global its file never set (or that loading the file skipped: the hint says which)
        raise TuduiError(f"model {name} failed on a batch of 2 images: NameError: {e}"
                         f"{skipped_hint(type(model).__module__, e)}") from None
    if not isinstance(out, torch.Tensor) or out.shape != (2, spec.num_classes):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise TuduiError(f"model {name} returns {got} for a batch of 2 images; a classifier for {spec.num_classes} "
                         f"classes must return logits of shape (2, {spec.num_classes}), i.e. (batch, num_classes)")


def registered_name(model: nn.Module, num_classes: int, in_channels: int, img_size: int) -> str | None:
    """The registered name ('timm:ARCH', 'resnet18') a model given built (timm's or torchvision's) is rebuilt by, not
    from the library's own source file, which does not import on its own: the name must build the same tensors for
    this data and, given the model's weights, compute what the model does (eval mode, one random batch: a swapped
    activation is caught); None otherwise (the model stays the user's own)."""
    name = instance_name(model, num_classes, in_channels, img_size) or \
        zoo_instance_name(model, num_classes, in_channels, img_size)
    if name is None:
        return None
    was_training = model.training
    try:
        rebuilt = create_model(name, num_classes, in_channels, img_size)
        rebuilt.load_state_dict(model.state_dict())
        device = next(model.parameters()).device
        x = torch.randn(2, in_channels, img_size, img_size, generator=torch.Generator().manual_seed(0)).to(device)
        with torch.no_grad():
            same = torch.allclose(rebuilt.to(device).eval()(x), model.eval()(x), rtol=1e-4, atol=1e-5)
    except Exception:  # noqa: BLE001 - the dry run reports a model that cannot take the input
        return None
    finally:
        model.train(was_training)
    return name if same else None


def _instantiate(cfg, spec) -> tuple[nn.Module, str, str | None, dict]:
    """(untrained model, its name, 'file.py:Name' of user code or None, constructor args) for cfg.model:
    a registered name, 'file.py:Name', an nn.Module instance or a builder callable (library)."""
    args = parse_model_args(cfg.model_args)
    m, shape = cfg.model, (spec.num_classes, spec.channels, spec.img_size)
    if isinstance(m, nn.Module):
        if args:
            raise TuduiError("model_args apply when tudui builds the model; this one is already built")
        known = registered_name(m, *shape)
        if known:
            return m, known, None, args
        ref = ref_for(m)
        return m, ref or type(m).__name__, ref, args
    if callable(m) and not isinstance(m, str):
        ref = ref_for(m)
        return call_builder(m, *shape, args), ref or getattr(m, "__name__", "model"), ref, args
    taken = [k for k in ("num_classes", "in_channels", "img_size") if k in args and not is_file_ref(m)]
    if taken:  # a registered builder (timm's too) gets them from the data: a second value would be a TypeError
        how = {"num_classes": "the data's class count", "in_channels": option_text("channels"),
               "img_size": option_text("img_size")}
        raise TuduiError(f"{option_text('model_args')} {', '.join(taken)}: tudui builds {m} for the data's input and "
                         f"classes (a timm ViT gets timm's img_size from it); set "
                         f"{', '.join(how[k] for k in taken)} instead")
    # registered builders load (or download) initial weights themselves; user code gets them in create_training_model
    weights = {"weights": cfg.weights} if cfg.weights and not is_file_ref(m) else {}
    return create_model(m, *shape, **args, **weights), m, (m if is_file_ref(m) else None), args


def is_known_instance(model, name: str) -> bool:
    """Whether a model given built was recognised as a registered architecture (`_instantiate`: timm's or
    torchvision's), which its checkpoints rebuild by name."""
    return isinstance(model, nn.Module) and (is_timm(name) or name in ZOO)


def create_training_model(cfg, spec, device: torch.device) -> tuple[nn.Module, dict]:
    """(model on `device`, its arch record) for a TrainConfig and the data's DataSpec: initial weights
    (--weights), channels-last (--channels-last), a dry run. A model of the user's has arch["source"]."""
    model, name, ref, args = _instantiate(cfg, spec)
    built = not isinstance(cfg.model, str)  # an object: a module (timm's too), a class or a builder
    user_code = ref is not None or (built and not is_known_instance(cfg.model, name))
    if cfg.weights and (user_code or built):
        load_weights(model, read_weights(cfg.weights), cfg.weights)
    model = model.to(device)
    hint = f"check its first layer's in_channels ({option_text('channels')}) and the size its Linear expects " \
        f"({option_text('img_size')})" if user_code or built else \
        f"try {option_text('img_size', get_model_info(cfg.model).default_size)}"
    # first: the dry run also gives lazy layers (nn.LazyLinear) their shapes
    check_forward(model, spec, name, device, hint)
    if cfg.channels_last:  # NHWC: oneDNN (CPU) and cuDNN run convolutions faster (benchmarks/README.md)
        model = model.to(memory_format=torch.channels_last)
    if is_timm(name):  # rebuilt without the weights' tag or the local-dir: folder (its weights are the run's)
        name = arch_name(name)
    arch = make_arch(name, spec.num_classes, spec.channels, spec.img_size, **args)
    if user_code:  # rebuilt later from its file
        arch["source"] = source_record(ref, args) if ref else {"name": name, "path": None, "args": args}
    return model, arch
