"""Group "quality-memory": eq. 19's gradient through the ODE, adjoint vs direct backprop.

The paper: with the adjoint method the memory of the image quality loss is O(1) in
the number of solver steps s instead of O(s).  Here: probability flow with
torchdiffeq's fixed-step rk4 at s = 4, 8, 16 steps (4 s NFE forward), the quality
loss's gradient w.r.t. the U-Net parameters, on the benchmark ECDP (16x16 -> 64x64,
one image).  Peak autograd memory = peak live bytes of tensors saved for backward
(:class:`helpers.memory.SavedTensorMeter` of tests/helpers/memory.py, measured once
outside the timed round, which also warms up; on CUDA the allocator peak is added).  Timed: the whole forward + backward.  The trend
is asserted: adjoint flat in s, direct growing ~linearly.
"""
from __future__ import annotations

import pytest
import torch

STEPS = (4, 8, 16)
MODES = ("adjoint", "direct")


def _grad_fn(model, lr, hr, mode, steps):
    from ecdp.sampling import sample_ode

    params = list(model.unet.parameters())
    mu, cond = model.mu(lr), model.encoder(lr).detach()

    def run():
        x_T = model.sde.prior_sample(mu, model.sigma2, torch.Generator().manual_seed(0))
        sr, stats = sample_ode(model.denoiser(mu, cond), x_T, mu, model.sigma2, model.sde, method="rk4",
                               step_size=(model.sde.T - model.sde.t_eps) / steps, adjoint=mode == "adjoint",
                               adjoint_params=params if mode == "adjoint" else None)
        loss = (sr - hr).abs().mean()
        grads = torch.autograd.grad(loss, params)
        return stats["nfe"], grads

    return run


_PEAKS: dict = {}


def _measure(model, lr, hr, mode, steps):
    from helpers import SavedTensorMeter

    if (mode, steps) not in _PEAKS:
        with SavedTensorMeter() as meter:
            nfe, _ = _grad_fn(model, lr, hr, mode, steps)()
        _PEAKS[(mode, steps)] = (meter.peak, meter.peak_cuda, nfe)
    return _PEAKS[(mode, steps)]


@pytest.mark.benchmark(group="quality-memory")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("steps", STEPS)
def test_quality_gradient(benchmark, bench, ecdp_model, bench_data, mode, steps):
    from ecdp.data import PairedImages

    trained, info = ecdp_model
    model = trained.float().eval()
    hr, lr, _ = PairedImages(bench_data, "test")[0]
    hr, lr = hr[None], lr[None]
    peak, peak_cuda, nfe = _measure(model, lr, hr, mode, steps)
    result = benchmark.pedantic(_grad_fn(model, lr, hr, mode, steps), rounds=1, warmup_rounds=0, iterations=1)
    assert result[0] == nfe == 4 * steps
    benchmark.extra_info.update(bench.machine_extra())
    benchmark.extra_info.update({"method": "ECDP", "mode": mode, "steps": steps, "solver": "rk4 (torchdiffeq)",
                                 "nfe": nfe, "peak_saved_bytes": peak, "peak_cuda_bytes": peak_cuda,
                                 "weights": info["weights"], "params": info["params"]})
    if steps == STEPS[-1]:  # the trend, over every step count of this mode (measured here if deselected)
        peaks = [_measure(model, lr, hr, mode, s)[0] for s in STEPS]
        benchmark.extra_info["peaks_by_steps"] = dict(zip(map(str, STEPS), peaks))
        if mode == "adjoint":
            assert max(peaks) <= 1.05 * min(peaks), f"adjoint memory not flat: {peaks}"
        else:
            assert all(b > 1.8 * a for a, b in zip(peaks, peaks[1:])), f"direct memory not O(steps): {peaks}"
            adj = _measure(model, lr, hr, "adjoint", STEPS[-1])[0]
            assert adj < peaks[-1] / 4
