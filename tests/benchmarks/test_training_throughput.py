"""Group "training-throughput": training images per second of each Table 6 ECDP
architecture (issue 14) in fp32, bf16 autocast, bf16 + channels_last, and compiled;
group "loader": the data loader alone, to set beside a training step.

On CUDA: the paper's score-stage batch and HR crop of each dataset (config/paper.yaml:
DIV2K 16 x 160, ImageNet 6 x 256, CelebA 12 x 160).  On CPU (what CI has) the same
networks with batch 1 and HR crop 64 so that a round takes seconds: CPU figures only
show that every mode runs and roughly what it costs (``extra_info["scale"]`` says
which), and ``compiled`` is skipped on CPU (inductor compiles a 40M-parameter U-Net
for minutes).  One score-stage optimiser step per round (eq. 16), Adam, through the
training loop's own autocast / memory-format settings.
"""
from __future__ import annotations

import pytest
import torch

from ecdp import config as config_mod

PAPER = {"div2k": (16, 160), "imagenet": (6, 256), "celeba": (12, 160)}   # score-stage batch, HR crop
SCALES = {"div2k": 4, "imagenet": 4, "celeba": 8}
MODES = {"fp32": ("fp32", False, False), "bf16": ("bf16", False, False),
         "bf16+channels_last": ("bf16", True, False), "compiled": ("fp32", False, True)}


def _method(arch: str, device):
    from ecdp.registry import build_method

    cfg = config_mod.resolve({"method": "ecdp", "protocol": "paper", "model": {"arch": arch}})
    scale = SCALES[arch]
    meta = {"scale": scale, "sigma2": 0.01, "sigma2_by_kernel": {"matlab": 0.01, "torch": 0.01}}
    return build_method(cfg, meta).to(device), scale


@pytest.mark.benchmark(group="training-throughput")
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("arch", list(PAPER))
def test_training_throughput(benchmark, bench, arch, mode):
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision, channels_last, compiled = MODES[mode]
    if compiled and device.type == "cpu":
        pytest.skip("torch.compile of a Table 6 U-Net on CPU takes minutes: measured on CUDA only")
    batch, crop = PAPER[arch] if device.type == "cuda" else (1, 64)
    torch.manual_seed(0)
    method, scale = _method(arch, device)
    stage = {"name": "score", "kind": "score", "steps": 1, "batch": batch, "lr": 1e-4, "encoder_lr": 1e-5}
    method.set_stage(stage)
    method.train()
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    method.to(memory_format=fmt)
    hr = torch.rand(batch, 3, crop, crop, device=device).contiguous(memory_format=fmt)
    lr = torch.nn.functional.avg_pool2d(hr, scale).contiguous(memory_format=fmt)
    opt = torch.optim.Adam(method.param_groups(stage))
    losses_fn = torch.compile(method.training_losses) if compiled else method.training_losses
    amp = {"fp32": None, "bf16": torch.bfloat16}[precision]

    def step():
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            loss = sum(v.float() for v in losses_fn(hr, lr).values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return float(loss.detach())

    loss = benchmark.pedantic(step, rounds=3, warmup_rounds=1, iterations=1)
    assert torch.isfinite(torch.tensor(loss))
    benchmark.extra_info.update(bench.machine_extra())
    benchmark.extra_info.update({
        "arch": arch, "mode": mode, "batch": batch, "hr_crop": crop, "params": method.parameter_count(),
        "images_per_s": batch / benchmark.stats["median"],
        "scale": "paper batch and crop" if device.type == "cuda" else "CPU: batch 1, HR crop 64 (not the paper's)"})


@pytest.mark.benchmark(group="loader")
@pytest.mark.parametrize("workers", [0, 2])
def test_loader_alone(benchmark, bench, bench_data, workers):
    """Batches of the training loader (PatchSampler + TrainPatches) per second, without a
    model: compare ``batches_per_s`` with a training step's rate (the rows above)."""
    from ecdp.data import TrainPatches
    from ecdp.training import make_loader

    batch, patch, n = 16, 32, 8
    dataset = TrainPatches(bench_data, patch)
    stage = {"batch": batch}

    def epoch():
        loader = make_loader(dataset, stage, seed=0, start_step=0, steps=n, workers=workers)
        return sum(hr.shape[0] for hr, _ in loader)

    count = benchmark.pedantic(epoch, rounds=3, warmup_rounds=1, iterations=1)
    assert count == batch * n
    benchmark.extra_info.update(bench.machine_extra())
    benchmark.extra_info.update({"workers": workers, "batch": batch, "patch": patch,
                                 "batches_per_s": n / benchmark.stats["median"],
                                 "note": "embedded-size images (bench_data); at paper scale decoding is per patch too"})
