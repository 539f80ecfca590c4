"""Group "sampling": seconds per image and NFE of every method's sampler (Table 3, CPU scale).

16x16 LR -> 64x64 HR, one image per call, same-size networks (see conftest).  Rows:

* ECDP probability flow, dopri5 atol = rtol = 1e-4 (the paper's sampler; the reference
  of every ratio in ``results/benchmarks/sampling.md``), ECDP's fixed-step samplers
  (with the few-step ``dpmpp_3m`` / ``unipc``) and a distilled student's 1- and 2-step
  sampling (the same network on its own dpmpp_1 grid);
* SRDiff, its 100-step ancestral chain (the method's default);
* SR3, the full 2000-step ancestral chain: too slow on CPU, so a 20-step chain of the
  same network is timed and its per-step cost is multiplied by 2000
  (``extra_info["extrapolated"] = True``); plus SR3 with a 100-step re-spaced chain.

``extra_info`` carries method, sampler, NFE, parameters, FLOPs per network evaluation,
weights (trained / untrained), sizes and threads; ``ecdp.report.benchmarks`` turns the
``--benchmark-json`` file into tables.
"""
from __future__ import annotations

import pytest
import torch

from ecdp.timing import sampler_call

ROUNDS = 3
SR3_TIMED_STEPS, SR3_FULL_STEPS = 20, 2000


def _run(benchmark, method, lr, opts, rounds=ROUNDS):
    """One warm-up round, then ``rounds`` timed calls of the harness of ``ecdp time``."""
    out, call = {}, sampler_call(method, lr, opts, seed=0)

    def once():
        sr, out["stats"] = call()
        return sr

    sr = benchmark.pedantic(once, rounds=rounds, warmup_rounds=1, iterations=1)
    assert sr.shape[-1] == lr.shape[-1] * 4 and torch.isfinite(sr).all()
    return out["stats"]


def _extra(benchmark, bench, info, **kw):
    benchmark.extra_info.update(bench.machine_extra())
    benchmark.extra_info.update({"weights": info["weights"], "params": info["params"], **kw})


ECDP_SAMPLERS = [
    ("dopri5-1e-4", {"name": "ode", "method": "dopri5", "atol": 1e-4, "rtol": 1e-4}, True),
    ("dpmpp_2m-10", {"name": "dpmpp_2m", "steps": 10}, False),
    ("dpmpp_2m-20", {"name": "dpmpp_2m", "steps": 20}, False),
    ("heun-10", {"name": "heun", "steps": 10}, False),
    ("rk4-5", {"name": "rk4", "steps": 5}, False),
    ("dpmpp_3m-5", {"name": "dpmpp_3m", "steps": 5}, False),     # few-step solvers (issue 17)
    ("unipc-5", {"name": "unipc", "steps": 5}, False),
    # a distilled student's sampling (ecdp.model.ECDP.distill_loss): the same network, its
    # own K-step dpmpp_1 grid; the cost of a step does not depend on the weights
    ("student-1step", {"name": "dpmpp_1", "steps": 1}, False),
    ("student-2step", {"name": "dpmpp_1", "steps": 2}, False),
]


@pytest.mark.benchmark(group="sampling")
@pytest.mark.parametrize("label,opts,reference", ECDP_SAMPLERS, ids=[s[0] for s in ECDP_SAMPLERS])
def test_ecdp(benchmark, bench, ecdp_model, bench_lr, label, opts, reference):
    model, info = ecdp_model
    stats = _run(benchmark, model, bench_lr, opts)
    _extra(benchmark, bench, info, method="ECDP", sampler=label, options=opts, nfe=stats["nfe"],
           reference=reference, extrapolated=False,
           flops_per_nfe=bench.flops_per_nfe(model, bench_lr, {"name": "dpmpp_1", "steps": 1},
                                             {"name": "dpmpp_1", "steps": 2}))


@pytest.mark.benchmark(group="sampling")
def test_srdiff_100(benchmark, bench, srdiff_model, bench_lr):
    model, info = srdiff_model
    stats = _run(benchmark, model, bench_lr, {"name": "ancestral", "steps": None})
    assert stats["nfe"] == 100
    _extra(benchmark, bench, info, method="SRDiff", sampler="ancestral-100", options={"steps": 100},
           nfe=stats["nfe"], reference=False, extrapolated=False,
           flops_per_nfe=bench.flops_per_nfe(model, bench_lr, {"steps": 1}, {"steps": 2}))


@pytest.mark.benchmark(group="sampling")
def test_sr3_full_chain_extrapolated(benchmark, bench, sr3_model, bench_lr):
    """SR3's 2000-step chain: time a 20-step chain of the same network, x 2000 / 20."""
    model, info = sr3_model
    stats = _run(benchmark, model, bench_lr, {"name": "ancestral", "steps": SR3_TIMED_STEPS})
    assert stats["nfe"] == SR3_TIMED_STEPS
    _extra(benchmark, bench, info, method="SR3", sampler=f"ancestral-{SR3_FULL_STEPS} (extrapolated)",
           options={"steps": SR3_TIMED_STEPS}, nfe=SR3_FULL_STEPS, measured_nfe=stats["nfe"], reference=False,
           extrapolated=True, timed_steps=SR3_TIMED_STEPS, full_steps=SR3_FULL_STEPS,
           extrapolation=f"median seconds of a {SR3_TIMED_STEPS}-step chain x {SR3_FULL_STEPS}/{SR3_TIMED_STEPS}",
           flops_per_nfe=bench.flops_per_nfe(model, bench_lr, {"steps": 1}, {"steps": 2}))


@pytest.mark.benchmark(group="sampling")
def test_sr3_100(benchmark, bench, sr3_model, bench_lr):
    model, info = sr3_model
    stats = _run(benchmark, model, bench_lr, {"name": "ancestral", "steps": 100}, rounds=2)
    assert stats["nfe"] == 100
    _extra(benchmark, bench, info, method="SR3", sampler="ancestral-100 (re-spaced)", options={"steps": 100},
           nfe=stats["nfe"], reference=False, extrapolated=False,
           flops_per_nfe=bench.flops_per_nfe(model, bench_lr, {"steps": 1}, {"steps": 2}))
