"""GPU training (skipped without CUDA): AMP on the GPU, then the checkpoint used on the CPU."""
import pytest
import torch

import tudui
from tudui.core.checkpoint import load_checkpoint

pytestmark = pytest.mark.gpu


def test_cuda_amp_training_and_cpu_prediction(tmp_path, fmnist_folders):
    r = tudui.train(data=str(fmnist_folders), model="fast", epochs=3, batch_size=64, device="cuda", amp=True,
                    project=str(tmp_path), name="gpu")
    assert r.test is None and r.val["top1"] > 0.3
    ckpt = load_checkpoint(r.best, map_location="cpu")
    assert all(v.device.type == "cpu" for v in ckpt["model"].values())
    raw = torch.load(r.best, weights_only=True)  # tensors as saved
    assert all(v.device.type == "cpu" for v in raw["model"].values())
    p = tudui.Predictor.from_path(r.best, device="cpu")
    files = sorted((fmnist_folders / "val").rglob("*.jpg"))[:10]
    assert all(pred.error is None for pred in p.predict([str(f) for f in files]))
    gpu = tudui.Predictor.from_path(r.best, device="cuda")
    a = p.predict([str(f) for f in files], topk=1)
    b = gpu.predict([str(f) for f in files], topk=1)
    assert [x.label for x in a] == [x.label for x in b]


def test_memory_resident_data_lives_on_the_gpu(tmp_path):
    from tudui.data import make_loader
    from tudui.data.sources import load_named
    from tudui.data.spec import DataSpec

    split = load_named("digits", True)
    spec = DataSpec([str(i) for i in range(10)], 8, 1, [0.3], [0.3])
    loader = make_loader(split, spec, 32, True, torch.device("cuda"))
    x, y = next(iter(loader))
    assert x.device.type == "cuda" and x.dtype == torch.uint8 and y.device.type == "cuda"


def test_the_windows_heads_maps_on_the_gpu_are_the_cpus():
    """fast-mlp above 28 px (its hidden layer on each 3x3 window, a convolution) gives the same Grad-CAM maps, from the
    same layer, on CUDA as on the CPU (TF32 convolutions on CUDA: a loose tolerance on maps scaled to [0, 1])."""
    import numpy as np

    from tudui.engine import cam
    from tudui.models import create_model

    torch.manual_seed(0)
    net = create_model("fast-mlp", 3, 1, 56).eval()
    x = torch.randn(4, 1, 56, 56)
    layer = cam.find_layer(net, x[:1])
    want = cam.class_maps(net, x, [0, 1, 2, 0], "gradcam", layer)
    gpu, xg = net.cuda(), x.cuda()
    chosen = cam.find_layer(gpu, xg[:1])
    got = cam.class_maps(gpu, xg, [0, 1, 2, 0], "gradcam", chosen)
    assert layer.name == chosen.name == "14" and np.abs(got - want).max() < 0.05
