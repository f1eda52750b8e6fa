"""--cuda-graph (engine/cuda_graph.py): when a run records its step as a graph, and (on CUDA) that the replayed step
computes what the eager one does."""
import pytest
import torch

import tudui
from tudui.core.config import TrainConfig
from tudui.engine.choices import resolve_cuda_graph

gpu = pytest.mark.gpu


@pytest.mark.parametrize("opts, device, registered, want, note", [
    ({}, "cpu", True, "off", None),  # nothing to say where there is no GPU
    ({"cuda_graph": "on"}, "cpu", True, "off", "cuda graph off (the device is cpu, not CUDA)"),
    ({}, "cuda", True, "on", "cuda graph on (auto: a registered model on CUDA)"),
    ({}, "cuda", False, "off", "cuda graph off (auto: a model of your own; --cuda-graph on captures it)"),
    ({"cuda_graph": "on"}, "cuda", False, "on", "cuda graph on"),
    ({"cuda_graph": "off"}, "cuda", True, "off", None),
    ({"accumulate": 2}, "cuda", True, "off", "cuda graph off (--accumulate sums gradients over batches; a graph "
                                             "overwrites them)"),
    ({"compile": True}, "cuda", True, "off", "cuda graph off (--compile: compiled kernels are not recorded here)"),
    ({"amp": "fp16"}, "cuda", True, "on", "cuda graph on (auto: a registered model on CUDA)"),
])
def test_when_a_run_records_its_step(opts, device, registered, want, note):
    cfg = TrainConfig.from_dict({"data": ["digits"], **opts})
    use, said = resolve_cuda_graph(cfg, torch.device(device), ddp=False, registered=registered)
    assert (use, cfg.cuda_graph, said) == (want == "on", want, note)


def test_a_run_on_the_cpu_writes_the_resolved_choice(tmp_path):
    r = tudui.train(data="digits", epochs=1, subset=200, project=str(tmp_path), name="c", cuda_graph="on")
    assert "cuda_graph: 'off'" in (r.run_dir / "config.yaml").read_text()


@gpu
@pytest.mark.parametrize("amp, tolerance", [("off", 1e-4), ("fp16", 1e-2)])
def test_cuda_graph_replays_give_the_eager_gradients_and_statistics(amp, tolerance):
    """Three steps of one model through GraphedStep and of its copy eagerly: same loss, gradients and BatchNorm
    statistics at every step, with new data and updated weights each time (the graph reads both live); in fp16 the
    gradients of the loss times the scaler's scale, which changes between steps (the graph reads it live too)."""
    from tudui.engine.cuda_graph import GraphedStep
    from tudui.models import create_model

    torch.manual_seed(0)
    # full fp32 arithmetic: TF32 convolutions (cuDNN's default) round to 10 bits, and the two sides may pick different
    # algorithms, so their gradients would differ by ~1e-3 of their size whatever the graph does
    tf32 = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _three_steps_both_ways(create_model, GraphedStep, amp, tolerance)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = tf32


def _three_steps_both_ways(create_model, GraphedStep, amp: str, tolerance: float) -> None:
    import copy

    import torch.nn as nn

    from tudui.core.device import autocast, make_scaler

    model = create_model("fast-res", 10, 1, 28).cuda().to(memory_format=torch.channels_last).train()
    eager = copy.deepcopy(model)
    crit = nn.CrossEntropyLoss(label_smoothing=0.1)
    dev = torch.device("cuda")
    scaler = make_scaler(dev, amp)
    assert scaler.is_enabled() == (amp == "fp16")
    step = GraphedStep(model, crit, dev, amp, scaler.scale)
    for i in range(3):
        x = torch.randn(64, 1, 28, 28, device="cuda").contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (64,), device="cuda")
        loss, ce = step(x, y)
        with autocast(dev, amp):
            logits = eager(x)
            ref = crit(logits, y)
        scaler.scale(ref).backward()
        assert step.failed is None and step.graph is not None
        torch.testing.assert_close(loss, ref.detach(), rtol=tolerance, atol=1e-5)
        # the plain cross-entropy beside the smoothed loss, read from this replay's logits
        ref_ce = nn.functional.cross_entropy(logits.detach().float(), y)
        torch.testing.assert_close(ce, ref_ce, rtol=tolerance, atol=1e-5)
        for (name, p), q in zip(model.named_parameters(), eager.parameters()):  # within tolerance x its size
            err = float((p.grad - q.grad).norm()) / (float(q.grad.norm()) + 1e-12)
            assert err <= tolerance, f"step {i}: {name}'s gradient differs by {err:.2g} of its norm"
        for b, c in zip(model.buffers(), eager.buffers()):  # the warm-ups' updates were undone
            torch.testing.assert_close(b, c, rtol=tolerance, atol=1e-5)
        with torch.no_grad():
            for p in model.parameters():
                p -= 0.05 * p.grad / scaler.get_scale()
        if amp == "fp16":
            scaler.update(scaler.get_scale() / 2)  # a new scale, written into the same tensor
        eager.load_state_dict(model.state_dict())  # both start the next step from the same weights: differences of
        model.zero_grad(set_to_none=True)  # ~3e-6 (two eager passes differ by as much) would otherwise compound
        eager.zero_grad(set_to_none=True)
    graph = step.graph
    step(x[:32], y[:32])  # another batch size: a new recording
    assert step.graph is not graph and step.x.shape[0] == 32


@gpu
def test_training_uses_a_cuda_graph_and_learns_as_without(tmp_path, fmnist_folders, capsys):
    runs = {mode: tudui.train(data=str(fmnist_folders), model="fast-res", epochs=3, batch_size=64, device="cuda",
                              cuda_graph=mode, project=str(tmp_path), name=mode) for mode in ("auto", "off")}
    out = capsys.readouterr().out
    assert "cuda graph on (auto: a registered model on CUDA)" in out
    for r in runs.values():
        assert r.val["top1"] > 0.3
    assert (runs["auto"].run_dir / "config.yaml").read_text().count("cuda_graph: 'on'") == 1
    # the same seed and data: the two runs differ only by the order of floating-point sums
    assert abs(runs["auto"].val["top1"] - runs["off"].val["top1"]) < 0.15


@gpu
def test_a_model_that_reads_back_during_forward_trains_without_a_graph(tmp_path, fmnist_folders, capsys):
    import torch.nn as nn

    class ReadsBack(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.fc = nn.Conv2d(1, 8, 3, padding=1), nn.Linear(8, 10)  # grey images

        def forward(self, x):
            h = self.conv(x).relu().mean((2, 3))
            if float(h.abs().max()) > 1e6:  # a host read: not allowed while a graph records
                h = h / 2
            return self.fc(h)

    r = tudui.train(data=str(fmnist_folders), model=ReadsBack(), epochs=1, batch_size=32, device="cuda",
                    cuda_graph="on", project=str(tmp_path), name="rb")
    err = capsys.readouterr().err
    assert "cannot be recorded as a CUDA graph" in err and "training on without one" in err
    assert r.val is not None and len(r.history) == 1
