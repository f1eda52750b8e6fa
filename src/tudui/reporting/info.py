"""`tudui info`: the environment a run would use (versions, accelerators, threads, datasets)."""
from __future__ import annotations

import os
import platform

from ..core.console import table
from ..core.files import versions as core_versions
from ..data.sources import NAMED, search_dirs, where


def environment(data_root: str | None = None) -> dict:
    """Versions, CUDA/MPS availability and device names, CPU threads, and where each built-in dataset is."""
    import torch

    versions = core_versions()
    for mod in ("tensorboard", "matplotlib", "numpy"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = "not installed"
    cuda = torch.cuda.is_available()
    mps = getattr(torch.backends, "mps", None)
    return {
        "versions": versions,
        "cuda": {"available": cuda, "version": torch.version.cuda,
                 "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []},
        "mps": {"available": bool(mps and mps.is_available())},
        "cpu": {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
                "machine": platform.machine(), "system": f"{platform.system()} {platform.release()}"},
        "datasets": {name: where(name, data_root) for name in NAMED},
        "dataset_search_dirs": [str(d) for d in search_dirs(data_root)],
    }


def format_environment(env: dict) -> str:
    v, c, m, cpu = env["versions"], env["cuda"], env["mps"], env["cpu"]
    lines = ["versions: " + "  ".join(f"{k} {val}" for k, val in v.items())]
    if c["available"]:
        lines.append(f"CUDA: yes (CUDA {c['version']}), {len(c['devices'])} device(s): "
                     + ", ".join(f"cuda:{i} {n}" for i, n in enumerate(c["devices"])))
    else:
        lines.append("CUDA: no" + (f" (torch built with CUDA {c['version']}, but no usable GPU or driver)"
                                   if c["version"] else " (a CPU-only torch build)"))
    lines.append("MPS (Apple GPU): " + ("yes" if m["available"] else "no"))
    lines.append(f"CPU: {cpu['cpu_count']} logical cores, torch uses {cpu['torch_threads']} threads "
                 f"({cpu['system']}, {cpu['machine']})")
    lines.append("\n" + table(["dataset", "where (or how to get it)"], [[k, w] for k, w in env["datasets"].items()],
                              "<<"))
    lines.append("datasets are looked for in: " + ", ".join(env["dataset_search_dirs"]))
    return "\n".join(lines)
