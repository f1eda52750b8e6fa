"""Lessons: saving and loading a model, testing it on a new image.

The course saves with torch.save(model) or torch.save(model.state_dict()), reloads with map_location when a GPU
model meets a CPU, and classifies airplane.png after convert('RGB') (the PNG has an alpha channel), Resize((32, 32))
and ToTensor. tudui's checkpoint carries the class names and that preprocessing, so one call does it all.

    python examples/course/04_save_load_predict.py [--data fashion-mnist] [--out runs/course] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from PIL import Image

import tudui
from tudui.cli import main as tudui_cli

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("--data", default="fashion-mnist", help="a dataset name or folder [default: fashion-mnist]")
parser.add_argument("--out", default="runs/course", help="work folder [default: runs/course]")
parser.add_argument("--epochs", type=int, default=3)
parser.add_argument("--subset", type=int, default=None, help="train on N images only (a seeded random choice)")
args = parser.parse_args()
out = Path(args.out)

result = tudui.train(data=args.data, model="cifar-net", img_size=32, epochs=args.epochs, subset=args.subset,
                     project=str(out), name="saved")

# Saving: best.pt and last.pt are plain dicts of tensors and values, read back with weights_only=True (a file
# cannot run code), on the CPU whatever device wrote them (the course's map_location=torch.device('cpu')).
ckpt = torch.load(result.best, map_location="cpu", weights_only=True)
print("checkpoint keys:", ", ".join(sorted(ckpt)))
print("it knows its architecture:", ckpt["arch"]["name"], "and its classes:", ", ".join(ckpt["data"]["classes"]))

# Loading, the course's way 2 (the officially recommended state_dict): build the same net, load the weights.
model = tudui.create_model("cifar-net", num_classes=len(ckpt["data"]["classes"]), in_channels=ckpt["data"]["channels"],
                           img_size=32)
model.load_state_dict(ckpt["model"])
state_dict_file = out / "cifar_net_state_dict.pth"
torch.save(model.state_dict(), state_dict_file)
# ... and a state_dict from anywhere becomes a tudui checkpoint once told the classes and the input (no --trust:
# a state_dict holds tensors only). The course's way 1, torch.save(model), pickles the class itself: tudui
# convert loads such a file only with --trust (unpickling can run code), and then even where the class cannot be
# imported (a tudui_9.pth saved by a script run as __main__): the module tree and weights are read without the
# class's code and mapped onto --model, e.g. `tudui convert tudui_9.pth --trust --model cifar-net --num-classes 10
# --out tudui_9.pt` (docs/models.md).
classes = ckpt["data"]["classes"]
converted = out / "converted.pt"
assert tudui_cli(["convert", str(state_dict_file), "--model", "cifar-net", "--classes", *classes,
                  "--channels", str(ckpt["data"]["channels"]), "--img-size", "32",
                  "--mean", *map(str, ckpt["data"]["mean"]), "--std", *map(str, ckpt["data"]["std"]),
                  "--out", str(converted)]) == 0

# Testing on new images: real test pictures written as files, one of them saved the way airplane.png is (RGBA,
# larger than the net's input). No convert('RGB'), Resize or reshape to write: the predictor applies the
# checkpoint's own preprocessing, in eval mode, without gradients, and answers with class names.
new = out / "new_images"
assert tudui_cli(["data", "export", "fashion-mnist", "--split", "test", "--limit", "6", "--out", str(new)]) == 0
first = sorted(new.glob("*/*.png"))[0]
rgba = Image.open(first).convert("RGBA").resize((96, 96))
rgba.save(new / "like_airplane.png")
files = sorted(new.glob("*/*.png")) + [new / "like_airplane.png"]

names = json.loads((new / "classes.json").read_text(encoding="utf-8"))  # folder -> class name (T-shirt/top)
# Flip test-time augmentation (TTA) off for every prediction below, so all of them print the same probabilities:
# this run validated each image averaged with its mirror (`tudui train --tta`, on by default where flips keep the
# label), and best.pt remembers that, so `tudui predict best.pt` without --no-tta would average each image with its
# mirror and print slightly different probabilities; a converted state_dict carries no TTA setting (off).
predictor = tudui.Predictor.from_path(result.best, tta=False)
again = tudui.Predictor.from_path(converted, tta=False)
trained_tta = tudui.data.DataSpec.from_dict(ckpt["data"]).flip_tta
print(f"predictions with flip TTA off (best.pt's own setting: {'on' if trained_tta else 'off'}; converted: off)")
# The converted file gives the same answers. Its probabilities are the raw softmax: best.pt also carries the
# temperature its run fitted on the validation images to calibrate them, which a state_dict does not
# (`tudui calibrate converted.pt --data fashion-mnist` fits one, docs/explain.md).
for p, q in zip(predictor.predict(files, topk=3), again.predict(files, topk=3)):
    assert p.error is None and [c for c, _ in p.topk] == [c for c, _ in q.topk]
    truth = names.get(Path(p.source).parent.name, "?")
    print(f"{Path(p.source).name:18s} true {truth:12s} -> " + ", ".join(f"{c} {prob:.1%}" for c, prob in p.topk))

# The same from the shell (a folder is searched recursively), TTA off as above: the same probabilities.
print("the same images from the shell, `tudui predict ... --no-tta`:")
assert tudui_cli(["predict", str(result.best), str(new), "--topk", "3", "--no-tta"]) == 0
