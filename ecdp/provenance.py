"""What every run records next to its numbers: seed, config, git commit, device, versions."""
from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path


def git_commit(cwd: str | Path | None = None) -> str:
    """The suite's git commit (with ``-dirty`` if tracked code or configs have changes), or
    ``unknown``.  ``results/`` is left out of the check: the workflow rewrites the committed
    results there, which says nothing about the code that produced them."""
    cwd = cwd or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"],
                               cwd=cwd, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (sha + ("-dirty" if dirty else "")) if sha else "unknown"


def device_name(device) -> str:
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``; else :func:`platform.processor`)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware() -> dict:
    """The machine a number was measured on: CPU model, torch's CPU kernel capability
    (``AVX2``, ``AVX512``, ...: which vectorised kernels torch dispatched to, so float
    results can differ between machines of "the same kind") and the CPU count.  Runs
    are bit-identical on one machine; across machines expect last-digit differences
    and, for adaptive solvers, different NFE (docs/ARCHITECTURE.md, "Determinism")."""
    import torch

    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except (AttributeError, RuntimeError):
        capability = "unknown"
    return {"cpu_model": cpu_model(), "torch_cpu_capability": capability, "cpu_count": os.cpu_count()}


def versions() -> dict:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    from importlib import metadata

    for name in ("torch", "torchvision", "torchdiffeq", "lpips", "pyiqa", "numpy", "pandas", "snakemake"):
        try:  # installed distribution metadata: also for packages without __version__ (lpips)
            out[name] = metadata.version(name)   # plain str (TorchVersion breaks weights_only loads)
        except metadata.PackageNotFoundError:    # a missing optional package is recorded, not fatal
            out[name] = None
    import torch

    out["torch_build"] = str(torch.__version__)          # e.g. 2.14.1+cu130
    out["cuda"] = torch.version.cuda
    return out


def record(seed: int | None = None, device="cpu", **extra) -> dict:
    return {
        "seed": seed,
        "git_commit": os.environ.get("ECDP_GIT_COMMIT") or git_commit(),
        "device": device_name(device),
        "versions": versions(),
        "hardware": hardware(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **extra,
    }
