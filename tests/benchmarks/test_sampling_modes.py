"""Group "sampling-modes": seconds per image of ECDP's probability flow (eq. 13) with
the ImageNet Table 6 network (issue 14) for dopri5 at atol = rtol = 1e-4 (the paper's
sampler) and ``dpmpp_2m`` with 10 steps, in fp32, fp32 + channels_last, bf16 autocast
and compiled, through ``ecdp.checkpoint.configure_inference`` (what ``ecdp sr /
evaluate / time --precision --channels-last --compile`` use).

On CUDA: Table 3's size, 64x64 LR -> 256x256 HR.  On CPU (what CI has): 16x16 -> 64x64
so that a round takes seconds, compiled and dopri5 rows skipped (inductor compiles a
40M-parameter U-Net for minutes; dopri5 on the untrained network takes hundreds of NFE);
``extra_info["scale"]`` says which.  The network has random weights
(``weights: untrained``): dopri5's NFE then is not the trained model's (the per-NFE
cost is what these rows compare), and bf16 rows change the solution (tolerances of
1e-4 are below bf16's resolution), so they are speed figures only.
"""
from __future__ import annotations

import pytest
import torch

from ecdp import config as config_mod
from ecdp.checkpoint import configure_inference

SAMPLERS = {"dopri5-1e-4": {"name": "ode", "method": "dopri5", "atol": 1e-4, "rtol": 1e-4},
            "dpmpp_2m-10": {"name": "dpmpp_2m", "steps": 10}}
MODES = {"fp32": {}, "fp32+channels_last": {"channels_last": True}, "bf16": {"precision": "bf16"},
         "compiled": {"compile": True}}


@pytest.mark.benchmark(group="sampling-modes")
@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("sampler", list(SAMPLERS))
def test_sampling_modes(benchmark, bench, sampler, mode):
    from ecdp.registry import build_method

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if MODES[mode].get("compile") and device.type == "cpu":
        pytest.skip("torch.compile of a Table 6 U-Net on CPU takes minutes: measured on CUDA only")
    if sampler.startswith("dopri5") and device.type == "cpu":
        pytest.skip("dopri5 at 1e-4 on the untrained 40M-parameter network takes hundreds of NFE (minutes per "
                    "round on CPU) and its NFE is not a trained model's: on CPU the dpmpp_2m rows give the cost "
                    "per NFE; measured on CUDA")
    lr_size = 64 if device.type == "cuda" else 16
    cfg = config_mod.resolve({"method": "ecdp", "protocol": "paper", "model": {"arch": "imagenet"}})
    torch.manual_seed(0)
    meta = {"scale": 4, "sigma2": 0.01, "sigma2_by_kernel": {"matlab": 0.01, "torch": 0.01}}
    method = configure_inference(build_method(cfg, meta).to(device).eval(), device, **MODES[mode])
    lr = torch.rand(1, 3, lr_size, lr_size, generator=torch.Generator().manual_seed(0)).to(device)
    out = {}

    def once():
        with torch.no_grad():
            sr, out["stats"] = method.super_resolve(lr, generator=torch.Generator(device).manual_seed(0),
                                                    **SAMPLERS[sampler])
        if device.type == "cuda":
            torch.cuda.synchronize()
        return sr

    sr = benchmark.pedantic(once, rounds=2 if device.type == "cpu" else 3, warmup_rounds=1, iterations=1)
    assert sr.shape[-1] == 4 * lr_size and torch.isfinite(sr).all()
    benchmark.extra_info.update(bench.machine_extra())
    benchmark.extra_info.update({
        "arch": "imagenet", "sampler": sampler, "mode": mode, "nfe": out["stats"]["nfe"],
        "params": method.parameter_count(), "lr_size": lr_size, "hr_size": 4 * lr_size, "weights": "untrained",
        "scale": "Table 3 size (64 -> 256)" if device.type == "cuda" else "CPU: 16 -> 64 (not Table 3's 64 -> 256)"})
