"""Lessons: Dataset (class folders and the label-file layout), torchvision datasets, transforms, DataLoader.

The course reads hymenoptera_data (ants/bees) with its own Dataset class and CIFAR-10 through torchvision.
Here the images are real Fashion-MNIST pictures, read offline from Debian's dataset-fashion-mnist
(`tudui info` shows where each dataset is found), written out as image files in both of the course's layouts.

    python examples/course/01_data.py [--out runs/course] [--limit 2000]
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

import tudui
import tudui.data
from tudui.cli import main as tudui_cli

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--out", default="runs/course", help="work folder [default: runs/course]")
parser.add_argument("--limit", type=int, default=2000, help="training images to write (1/4 as many for val)")
args = parser.parse_args()
out = Path(args.out)

# torchvision.datasets: `tudui data export` writes a named dataset as root/<class>/<index>.png, the layout of the
# course's hymenoptera_data/train/ants/*.jpg (ImageFolder's layout). train/ and val/ become tudui's splits.
folders = out / "fashion_folders"
shutil.rmtree(folders, ignore_errors=True)
assert tudui_cli(["data", "export", "fashion-mnist", "--split", "train", "--limit", str(args.limit),
                  "--out", str(folders / "train")]) == 0
assert tudui_cli(["data", "export", "fashion-mnist", "--split", "test", "--limit", str(max(20, args.limit // 4)),
                  "--out", str(folders / "val")]) == 0

# The course's second layout: ants_image/x.jpg with ants_label/x.txt holding the label "ants".
labels = out / "fashion_label_files"
shutil.rmtree(labels, ignore_errors=True)
for image in sorted((folders / "train").glob("*/*.png")):
    name = image.parent.name
    (labels / f"{name}_image").mkdir(parents=True, exist_ok=True)
    (labels / f"{name}_label").mkdir(parents=True, exist_ok=True)
    shutil.copy(image, labels / f"{name}_image" / image.name)
    (labels / f"{name}_label" / f"{image.stem}.txt").write_text(name, encoding="utf-8")
# classes.json, written by the export, names the class each folder holds where a folder name cannot (T-shirt/top
# lives in T-shirt_top/); beside the label-file folders it does the same, so both layouts give the same classes.
shutil.copy(folders / "train" / "classes.json", labels / "classes.json")

# What the course's MyData.__len__/__getitem__ give, for both layouts: `tudui data check` counts each class and
# reports unreadable or duplicated images before a night's training finds them.
for root in (folders, labels):
    assert tudui_cli(["data", "check", str(root)]) == 0

train, val, _ = tudui.data.load_splits([str(folders)])
lab_train, lab_val, _ = tudui.data.load_splits([str(labels)], val_split=0.2)  # no val/ folder: 20% held out
assert lab_train.classes == train.classes, "both layouts give the same classes, sorted as ImageFolder sorts them"
print(f"class folders: {len(train)} train / {len(val)} val images; label files: {len(lab_train)} / {len(lab_val)}")
print("classes:", ", ".join(train.classes))

# transforms: Resize + ToTensor + Normalize with the mean/std measured on the training images (saved in every
# checkpoint, so predict uses the same numbers). eval_transforms(spec) is that Compose, one image at a time, as the
# course writes it; RandomCrop(padding) + RandomHorizontalFlip run on whole uint8 batches (augment_batch).
bundle = tudui.data.build_data(tudui.TrainConfig(data=[str(folders)], img_size=32))
spec = bundle.spec
print(f"input {spec.channels}x{spec.img_size}x{spec.img_size}, mean {spec.mean[0]:.3f}, std {spec.std[0]:.3f}")
pipeline = tudui.data.eval_transforms(spec)
print(pipeline)
one = pipeline(train.paths[0])
print("one image after the per-image pipeline:", tuple(one.shape), one.dtype)

# DataLoader(batch_size=64, shuffle=True): batches of (images, targets). Small datasets live in memory as uint8.
loader = tudui.data.make_loader(bundle.train, spec, 64, True, torch.device("cpu"))
images, targets = next(iter(loader))
pad, flip = tudui.data.augment_options("crop-flip", spec)  # 4 px of zero padding at 32x32, flips on
augmented = tudui.data.augment_batch(images, pad, flip)  # (64, C, 32, 32) uint8, each image shifted and/or flipped
x = tudui.data.normalize(augmented, spec)  # what the model sees
print(f"a batch: images {tuple(images.shape)} {images.dtype} -> normalised {x.dtype}, mean {x.mean():.2f}; "
      f"targets {tuple(targets.shape)}: {targets[:8].tolist()}")
assert images.shape == (64, spec.channels, 32, 32)
