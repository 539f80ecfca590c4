"""Group "training-step": one ECDP optimiser step with and without the image quality loss.

Batch of 2 HR 64x64 crops (LR 16x16), the benchmark ECDP network (trained weights, see
conftest), Adam.  "score": eq. 16 only.  "score+quality": eq. 16 + eq. 19, the SR
sample drawn by probability flow (dopri5) through ``odeint_adjoint``, as in the
quality stage; the feature network is the offline VGG ("auto") when its weights are
present, else a small random conv net (named in ``extra_info["feature_net"]``).  The
quality sampler tolerance is 1e-3 (the released code's) to keep the CPU run short;
``extra_info`` records it and the forward NFE.
"""
from __future__ import annotations

import copy

import pytest
import torch

BATCH = 2
QUALITY_SAMPLER = {"name": "ode", "method": "dopri5", "atol": 1e-3, "rtol": 1e-3, "adjoint": True}


def _batch(bench_data):
    from ecdp.data import PairedImages

    data = PairedImages(bench_data, "train")
    hr, lr = zip(*[(data[i][0], data[i][1]) for i in range(BATCH)])
    return torch.stack(hr), torch.stack(lr)


def _quality_loss_available(cfg) -> str:
    from ecdp.losses import build_quality_loss

    try:
        build_quality_loss(cfg["quality"])
        return cfg["quality"]["feature_net"]
    except Exception:  # noqa: BLE001 - no pretrained VGG offline: time the plumbing with a random net
        return "tiny-random"


@pytest.mark.benchmark(group="training-step")
@pytest.mark.parametrize("quality", [False, True], ids=["score", "score+quality"])
def test_ecdp_training_step(benchmark, bench, ecdp_model, bench_data, quality):
    trained, info = ecdp_model
    model = copy.deepcopy(trained).train()
    cfg = copy.deepcopy(model.cfg)
    cfg["quality"]["feature_net"] = _quality_loss_available(cfg)
    cfg["quality"]["sampler"] = dict(QUALITY_SAMPLER)
    cfg["quality"]["mode"] = "add"
    model.cfg = cfg
    stage = {"name": "quality" if quality else "score", "kind": "quality" if quality else "score",
             "steps": 1, "batch": BATCH, "lr": 1e-5, "encoder_lr": 1e-5}
    model.set_stage(stage)
    opt = torch.optim.Adam(model.param_groups(stage))
    hr, lr = _batch(bench_data)
    nfe = {}
    seed = [0]

    def step():
        torch.manual_seed(seed[0])
        seed[0] += 1
        losses = model.training_losses(hr, lr)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return {k: float(v.detach()) for k, v in losses.items()}

    if quality:  # the forward NFE of the quality sampler, counted once outside the timing
        mu, cond = model.mu(lr), model.encoder(lr).detach()
        with torch.no_grad():
            _, st = model.sample(mu, cond, {k: v for k, v in QUALITY_SAMPLER.items() if k != "adjoint"})
        nfe["forward"] = st["nfe"]
    # the quality step is ~100x the score step: no warm-up round for it (the score variant,
    # run first, has warmed the U-Net up)
    losses = benchmark.pedantic(step, rounds=3 if not quality else 2, warmup_rounds=0 if quality else 1,
                                iterations=1)
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    assert ("quality" in losses) == quality
    benchmark.extra_info.update(bench.machine_extra())
    benchmark.extra_info.update({
        "method": "ECDP", "step": stage["name"].replace("quality", "score+quality"), "images": BATCH,
        "hr_size": f"{hr.shape[-2]}x{hr.shape[-1]}", "weights": info["weights"], "params": info["params"],
        "quality_sampler": QUALITY_SAMPLER if quality else None,
        "quality_forward_nfe": nfe.get("forward"),
        "feature_net": cfg["quality"]["feature_net"] if quality else None,
        "losses": losses, "reference": not quality})
