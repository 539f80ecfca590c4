"""ecdp.cost: the FLOP, memory and extrapolation helpers behind
workflow/scripts/fullsize.py and gpu_hours.py (issue 13), on tiny networks."""
from __future__ import annotations

import math

import pytest
import torch

from ecdp import config as config_mod
from ecdp import cost
from ecdp.registry import build_method

TINY = {"method": "ecdp", "protocol": "paper",
        "model": {"arch": "custom", "channels": [8, 16, 16, 16], "blocks": [1, 1, 1, 1], "rrdb_blocks": 2,
                  "nf": 8, "gc": 4}}


def tiny_cfg() -> dict:
    return config_mod.resolve(TINY)


def test_linear_fit_recovers_a_known_line_and_flags_a_bent_one():
    x = [1.0, 2.0, 4.0, 8.0]
    fit = cost.linear_fit(x, [3 * v + 2 for v in x])
    assert fit["slope"] == pytest.approx(3) and fit["intercept"] == pytest.approx(2)
    assert fit["max_abs_rel_residual"] < 1e-12
    assert cost.predict(fit, 100.0) == pytest.approx(302)
    bent = cost.linear_fit(x, [v * v for v in x])
    assert bent["max_abs_rel_residual"] > 0.1
    with pytest.raises(ValueError):
        cost.linear_fit([1.0], [2.0])


def test_conv_net_flops_double_when_pixels_double_and_meta_counts_what_runs():
    cfg = tiny_cfg()
    meta = cost.meta_method(cfg, 4)
    a = cost.image_flops(meta, (16, 16))
    b = cost.image_flops(meta, (16, 32))
    # convolutions scale exactly with pixels; the time-embedding MLP (per image) does not
    assert b["per_nfe"] / a["per_nfe"] == pytest.approx(2, rel=0.01)
    # the RRDB encoder is convolutions; mu(y) (MATLAB bicubic as dense matrices) adds a
    # little that grows faster than the pixels
    assert b["per_image"] / a["per_image"] == pytest.approx(2, rel=0.05)
    enc = [cost.count_flops(meta.encoder, torch.zeros(1, 3, *hw, device="meta")) for hw in ((16, 16), (16, 32))]
    assert enc[1] == 2 * enc[0]
    torch.manual_seed(0)
    real = build_method(cfg, {"scale": 4, "sigma2": 0.01}).eval()
    assert cost.image_flops(real, (16, 16)) == a


def test_training_step_counts_the_backward():
    meta = cost.meta_method(tiny_cfg(), 4)
    stage = {"name": "score", "kind": "score", "steps": 1, "batch": 2, "lr": 1e-4}
    step = cost.train_step_flops(meta, stage, batch=2, patch=32)
    fwd = cost.image_flops(meta, (8, 8), batch=2)
    forward = fwd["per_image"] + fwd["per_nfe"]
    assert 2.5 * forward < step < 3.5 * forward      # forward + backward of the weights and inputs
    assert cost.train_step_flops(meta, stage, batch=4, patch=32) == pytest.approx(2 * step, rel=1e-9)


def test_quality_step_model_and_sampler_nfe():
    q = cost.quality_step_flops(score_step=100, per_image=10, per_nfe=1, batch=2, nfe=50, adjoint=True)
    assert q == 2 * (10 + 50) + 3 * 50 * 2 + 100
    chain = cost.quality_step_flops(score_step=0, per_image=0, per_nfe=1, batch=1, nfe=100, adjoint=False,
                                    checkpoint=True, add_score=False, nfe_backward=10)
    assert chain == 100 + 3 * 10
    assert cost.sampler_nfe({"name": "heun", "steps": 5}) == 10
    assert cost.sampler_nfe({"name": "rk4", "steps": 3}) == 12
    assert cost.sampler_nfe({"name": "dpmpp_3m", "steps": 3}) == 3 and cost.sampler_nfe({"name": "unipc", "steps": 5}) == 5
    assert cost.sampler_nfe({"name": "ddpm_chain", "steps": 300, "stop": 5}) == 295
    assert cost.sampler_nfe({"name": "ancestral", "steps": None}, chain_length=2000) == 2000
    measured = {("dopri5", 1e-4): 121.0}
    assert cost.sampler_nfe({"name": "ode", "method": "dopri5", "atol": 1e-4, "rtol": 1e-4}, measured) == 121
    with pytest.raises(ValueError):
        cost.sampler_nfe({"name": "ode", "method": "dopri5", "rtol": 1e-3}, measured)


def test_peak_live_bytes_counts_what_is_alive_at_once():
    x = torch.zeros(1000, device="meta")
    with cost.PeakLiveBytes() as m:
        y = x * 2            # 4000 B
        z = y + 1            # 8000 B alive
        del y
        w = z.view(10, 100)  # a view: no new memory
        z.add_(1)            # in place: no new memory
        v = w * 3            # 8000 B alive again (z, v)
    assert m.peak == 8000 and m.live == 8000
    del z, v, w


def test_gpu_hours_conversion():
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "workflow" / "scripts"))
    from gpu_hours import gpu_hours

    assert gpu_hours(19.5e12 * 0.4 * 3600, 19.5, 0.4) == pytest.approx(1.0)
    assert math.isclose(gpu_hours(156e12 * 3600, 156, 1.0), 1.0)


def test_readme_cost_paragraph_is_generated_from_the_committed_csvs():
    """Every number of the README's GPU-hours / memory paragraph comes from results/rehearsal/."""
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = root / "results" / "rehearsal"
    if not (out / "gpu_hours.csv").exists() or not (out / "fullsize.json").exists():
        pytest.skip("results/rehearsal/ not generated")
    sys.path.insert(0, str(root / "workflow" / "scripts"))
    from gpu_hours import readme_block

    assert readme_block(out) in (root / "README.md").read_text(), \
        "README cost paragraph is stale: run python3 workflow/scripts/gpu_hours.py --readme"
