"""Data: sources -> splits -> DataSpec -> uint8 batches.

Where each concept lives:
  spec.py        DataSpec (the input contract saved in checkpoints and exports), normalize, Layout (a decoded row)
  factory.py     build_data, the one factory: a TrainConfig's data options -> DataBundle
  loaders.py     batches of uint8 images from memory, the disk cache or files (make_loader)
  transforms.py  per-batch augmentation, model_logits (flip TTA), eval_transforms
  sources.py     named datasets (NAMED); folders.py, user.py: image folders and CSVs, a user's Dataset
  sampler.py     class imbalance: the imbalance ratio, --balance auto's choice, the balanced sampler's draws
  images.py      decoding one image; cache.py: decoded images on disk; split.py: Split
This module only re-exports.
"""
from ..core.config import MEMORY_LIMIT_MB
from .factory import (EVAL_BATCH_SIZE, IMAGENET_CROP_PCT, IMAGENET_MEAN, IMAGENET_STD, DataBundle, build_data,
                      eval_batch_size, fits_in_memory, load_decoded, load_eval_split, load_splits, train_layout)
from .images import RESAMPLE, decode_image
from .loaders import make_loader
from .sampler import LONG_TAILED, auto_balance, epoch_order, imbalance_ratio
from .spec import DataSpec, Layout, denormalize, eval_layout, normalize
from .split import Split
from .transforms import augment_batch, augment_options, eval_transforms, model_logits

__all__ = ["DataBundle", "DataSpec", "Split", "Layout", "build_data", "load_splits", "load_eval_split", "load_decoded", "make_loader",
           "normalize", "denormalize", "model_logits", "augment_batch", "augment_options", "eval_transforms",
           "decode_image", "eval_batch_size", "fits_in_memory", "eval_layout", "train_layout", "IMAGENET_MEAN",
           "IMAGENET_STD", "IMAGENET_CROP_PCT", "EVAL_BATCH_SIZE", "MEMORY_LIMIT_MB", "LONG_TAILED", "auto_balance",
           "epoch_order", "imbalance_ratio", "RESAMPLE"]
