"""SR3, SRDiff and their "++" variants (ECDP appendix C.2, Table 7): sizes, the quality
stage through each method's own sampler (weights move, gradients equal direct
backprop, memory flat in the number of steps with checkpointing), frozen SRDiff
encoder, tiny configs trained with `ecdp train` machinery and used by `ecdp sr`, and the
ECDP "without prob. flow" ablation (quality loss through the reverse-SDE sampler)."""
from __future__ import annotations

import json
import weakref
from pathlib import Path

import pytest
import torch

import baselines
from baselines import ddpm
from baselines.sr3 import SR3
from baselines.srdiff import SRDiff
from ecdp import config as config_mod
from ecdp.checkpoint import load_method
from ecdp.data import PairedImages
from ecdp.registry import build_method, count_params
from helpers import tiny_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny nets on 32 px patches: intra-op threads only add overhead (and spin on a
    loaded 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def baseline_config(data_root: Path, name: str, **overrides) -> dict:
    """config/tiny-NAME.yaml on the ``tiny4x`` fixture dataset, tiny-random feature net."""
    user = config_mod.load(ROOT / "config" / f"tiny-{name}.yaml")
    user = config_mod.deep_merge(user, {"data": {"root": str(data_root), "dataset": "tiny4x"},
                                        "quality": {"feature_net": "tiny-random"}})
    return config_mod.resolve(config_mod.deep_merge(user, overrides))


def meta_of(data_root: Path) -> dict:
    return json.loads((data_root / "tiny4x" / "meta.json").read_text())


def patches(data_root: Path, n: int = 2, size: int = 32):
    pair = PairedImages(data_root / "tiny4x", "train")
    hr = torch.stack([pair[i % len(pair)][0][:, :size, :size] for i in range(n)])
    lr = torch.stack([pair[i % len(pair)][1][:, : size // 4, : size // 4] for i in range(n)])
    return hr, lr


def snapshot(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, module: torch.nn.Module) -> bool:
    return any(not torch.equal(before[k], v) for k, v in module.state_dict().items())


# --- sizes ---------------------------------------------------------------------
def test_param_rows_reproduce_paper_sizes():
    rows = {r["arch"]: r for r in baselines.param_rows()}
    for r in rows.values():
        print(f"{r['method']:<7} {r['arch']:<16} ours {r['ours_m']:8.3f}M  paper {r['paper_m']:6.1f}M  ({r['counted']})")
    for arch in ("sr3-div2k", "sr3-celeba", "sr3-imagenet", "srdiff-celeba"):
        assert abs(rows[arch]["ours_m"] / rows[arch]["paper_m"] - 1) < 0.02, arch
    # SRDiff DIV2K/ImageNet: the released DF2K configuration; ECDP's 37.6M is not reachable
    assert rows["srdiff-div2k"]["ours_m"] == pytest.approx(25.204, abs=1e-3)
    assert rows["sr3-div2k"]["ours_m"] == pytest.approx(97.807, abs=1e-3)


def test_registry_builds_baselines_from_config(tiny_data):
    for name, klass in (("sr3", SR3), ("srdiff", SRDiff)):
        m = build_method(baseline_config(tiny_data, name), meta_of(tiny_data))
        assert isinstance(m, klass) and count_params(m) == m.parameter_count() > 0
    with pytest.raises(ValueError, match="arch"):
        SR3({"model": {"arch": "sr3-nope"}}, {"scale": 4})
    with pytest.raises(ValueError, match="stage kind"):
        SR3({}, {"scale": 4}).set_stage({"kind": "pretrain"})


# --- the ++ quality stage -------------------------------------------------------
def quality_method(tiny_data, name: str, steps: int, checkpoint: bool = True, truncate=None, mode: str = "only"):
    cfg = baseline_config(tiny_data, name, quality={"mode": mode, "truncate": truncate,
                                                    "sampler": {"steps": steps, "checkpoint": checkpoint}})
    torch.manual_seed(0)
    m = build_method(cfg, meta_of(tiny_data))
    m.set_stage({"kind": "quality", "lr": 1e-3})
    return m


def quality_grads(m, hr, lr, seed: int = 3):
    m.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    losses = m.training_losses(hr, lr)
    sum(losses.values()).backward()
    return losses, {k: p.grad.clone() for k, p in m.denoiser_net.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["sr3pp", "srdiffpp"])
def test_quality_stage_changes_weights(tiny_data, name):
    m = quality_method(tiny_data, name, steps=4)
    hr, lr = patches(tiny_data)
    opt = torch.optim.Adam([p for g in m.param_groups({"kind": "quality", "lr": 1e-3}) for p in g["params"]], lr=1e-3)
    before = snapshot(m.denoiser_net)
    enc_before = snapshot(m.rrdb) if hasattr(m, "rrdb") else None
    torch.manual_seed(1)
    losses = m.training_losses(hr, lr)
    assert set(losses) == {"quality"} and torch.isfinite(losses["quality"])  # mode: only
    losses["quality"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.denoiser_net.parameters())
    opt.step()
    assert changed(before, m.denoiser_net)
    if enc_before is not None:  # SRDiff's encoder stays frozen in the quality stage too
        assert not changed(enc_before, m.rrdb)
        assert all(p.grad is None for p in m.rrdb.parameters())
    # mode "add": the denoising loss as well
    m2 = quality_method(tiny_data, name, steps=2, mode="add")
    assert set(m2.training_losses(hr, lr)) == {"score", "quality"}


@pytest.mark.parametrize("name", ["sr3pp", "srdiffpp"])
def test_quality_gradients_equal_direct_backprop(tiny_data, name):
    hr, lr = patches(tiny_data)
    m = quality_method(tiny_data, name, steps=5, checkpoint=True)
    l_ck, g_ck = quality_grads(m, hr, lr)
    m.cfg["quality"]["sampler"]["checkpoint"] = False
    l_direct, g_direct = quality_grads(m, hr, lr)
    assert l_ck["quality"].item() == l_direct["quality"].item()  # same chain noise: reproducible step
    assert g_ck.keys() == g_direct.keys() and len(g_ck) > 0
    for k in g_ck:
        torch.testing.assert_close(g_ck[k], g_direct[k], rtol=1e-4, atol=1e-7)
    # truncation: same forward sample, a different (partial) gradient; K = N is exact
    m.cfg["quality"]["truncate"] = 2
    l_tr, g_tr = quality_grads(m, hr, lr)
    assert l_tr["quality"].item() == l_direct["quality"].item()
    assert any(not torch.allclose(g_tr[k], g_direct[k]) for k in g_tr)
    m.cfg["quality"]["truncate"] = 5
    _, g_full = quality_grads(m, hr, lr)
    for k in g_full:
        torch.testing.assert_close(g_full[k], g_direct[k], rtol=1e-5, atol=1e-8)
    # another global seed, another chain noise
    l_other, _ = quality_grads(m, hr, lr, seed=4)
    assert l_other["quality"].item() != l_direct["quality"].item()


class _Holder:
    __slots__ = ("__weakref__", "t")

    def __init__(self, t):
        self.t = t


class SavedBytes:
    """Peak live bytes that autograd keeps for the backward pass.

    Counts every tensor packed by ``saved_tensors_hooks`` until its graph node releases
    it (weakref finalizer on the packed holder), plus the inputs that non-reentrant
    checkpointing keeps for recomputation (finalizer on the tensor), each storage once
    (views and repeats share it) and without the parameters.  Not counted: the one
    step's activations alive while checkpointing recomputes it in the backward pass
    (saved under checkpoint's own hooks; bounded by one step of the direct chain)."""

    def __init__(self, exclude):
        self.exclude = {p.untyped_storage().data_ptr() for p in exclude}
        self.refs: dict[int, int] = {}
        self.live = self.peak = 0

    def track(self, t: torch.Tensor):
        key = t.untyped_storage().data_ptr()
        if key in self.exclude:
            return None
        if self.refs.get(key, 0) == 0:
            self.live += t.untyped_storage().nbytes()
            self.peak = max(self.peak, self.live)
        self.refs[key] = self.refs.get(key, 0) + 1
        return key, t.untyped_storage().nbytes()

    def release(self, key, nbytes):
        self.refs[key] -= 1
        if self.refs[key] == 0:
            self.live -= nbytes

    def pack(self, t):
        holder = _Holder(t)
        rec = self.track(t)
        if rec is not None:
            weakref.finalize(holder, self.release, *rec)
        return holder

    @staticmethod
    def unpack(holder):
        return holder.t


def peak_saved_bytes(m, hr, lr, monkeypatch) -> int:
    meter = SavedBytes(list(m.parameters()))
    real = ddpm.checkpoint

    def tracking_checkpoint(fn, *args, **kw):
        for a in args:
            if isinstance(a, torch.Tensor):
                rec = meter.track(a)
                if rec is not None:
                    weakref.finalize(a, meter.release, *rec)
        return real(fn, *args, **kw)

    monkeypatch.setattr(ddpm, "checkpoint", tracking_checkpoint)
    m.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    with torch.autograd.graph.saved_tensors_hooks(meter.pack, meter.unpack):
        loss = sum(m.training_losses(hr, lr).values())
        loss.backward()
    monkeypatch.setattr(ddpm, "checkpoint", real)
    return meter.peak


def test_checkpointing_keeps_memory_flat_in_steps(tiny_data, monkeypatch):
    hr, lr = patches(tiny_data, n=1)
    steps = (4, 8, 16)
    rows = {}
    for mode, kw in (("checkpoint", {"checkpoint": True}), ("direct", {"checkpoint": False}),
                     ("direct, truncate=2", {"checkpoint": False, "truncate": 2})):
        rows[mode] = [peak_saved_bytes(quality_method(tiny_data, "sr3pp", n, **kw), hr, lr, monkeypatch) for n in steps]
    image = hr[0].numel() * 4  # one float32 image state x_i
    print("\npeak autograd-saved bytes of one SR3++ quality step (1 x 3 x 32 x 32), by chain length:")
    print(f"{'':>20} " + " ".join(f"{n:>10} steps" for n in steps))
    for mode, vals in rows.items():
        print(f"{mode:>20} " + " ".join(f"{v / 2**10:>10.1f} KiB" for v in vals))
    ck, direct, trunc = rows["checkpoint"], rows["direct"], rows["direct, truncate=2"]
    ck_fixed = [v - n * image for v, n in zip(ck, steps)]
    print(f"{'checkpoint - N x_i':>20} " + " ".join(f"{v / 2**10:>10.1f} KiB" for v in ck_fixed))
    print(f"per added step: direct {(direct[2] - direct[0]) / (steps[2] - steps[0]) / 2**10:.1f} KiB, "
          f"checkpoint {(ck[2] - ck[0]) / (steps[2] - steps[0]) / 2**10:.1f} KiB (one image = {image / 2**10:.1f} KiB)")
    # direct backprop keeps every step's activations: ~linear in the number of steps
    assert direct[1] > 1.8 * direct[0] and direct[2] > 1.8 * direct[1]
    # checkpointing keeps one image (the step's input) per step and nothing else that grows
    assert all(abs(v - ck_fixed[0]) <= 0.02 * ck_fixed[0] for v in ck_fixed)
    assert (ck[2] - ck[0]) / (steps[2] - steps[0]) <= 1.02 * image
    assert (direct[2] - direct[0]) > 20 * (ck[2] - ck[0])
    assert ck[2] < 0.1 * direct[2]
    # truncation: memory of the last K steps whatever the chain length
    assert abs(trunc[2] - trunc[0]) <= 0.02 * trunc[0] and trunc[2] < 0.6 * direct[0]


# --- SRDiff specifics -------------------------------------------------------------
def test_srdiff_encoder_pretrained_then_frozen(tiny_data):
    m = build_method(baseline_config(tiny_data, "srdiff"), meta_of(tiny_data))
    hr, lr = patches(tiny_data)
    # pretrain: only the RRDBNet is optimised, with an L1 loss
    stage = {"kind": "pretrain", "lr": 1e-3}
    m.set_stage(stage)
    groups = m.param_groups(stage)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in m.rrdb.parameters()}
    enc, unet = snapshot(m.rrdb), snapshot(m.unet)
    opt = torch.optim.Adam(groups)
    losses = m.training_losses(hr, lr)
    assert set(losses) == {"l1"}
    losses["l1"].backward()
    opt.step()
    assert changed(enc, m.rrdb) and not changed(unet, m.unet)
    # score: the encoder is out of the optimiser and gets no gradient
    stage = {"kind": "score", "lr": 1e-3}
    m.set_stage(stage)
    groups = m.param_groups(stage)
    assert {id(p) for g in groups for p in g["params"]} == {id(p) for p in m.unet.parameters()}
    enc = snapshot(m.rrdb)
    m.zero_grad(set_to_none=True)
    opt = torch.optim.Adam(groups)
    losses = m.training_losses(hr, lr)
    assert set(losses) == {"score"}
    losses["score"].backward()
    assert all(p.grad is None for p in m.rrdb.parameters())
    opt.step()
    assert not changed(enc, m.rrdb)
    with pytest.raises(ValueError, match="frozen"):
        m.param_groups({"kind": "score", "lr": 1e-3, "encoder_lr": 1e-5})


def test_srdiff_residual_convention():
    """x_res = (x - up) * 2 in [-1, 1] units = 4 (hr - up) in [0, 1] units, clamped to [-1, 1]."""
    m = SRDiff({"model": {"arch": "custom", "unet_dim": 8, "dim_mults": [1, 2], "rrdb_blocks": 2, "rrdb_nf": 8}},
               {"scale": 4})
    hr, up01 = torch.full((1, 3, 4, 4), 0.55), torch.full((1, 3, 4, 4), 0.5)
    r = m.img2res(hr * 2 - 1, up01 * 2 - 1)
    torch.testing.assert_close(r, torch.full_like(r, 0.2))
    torch.testing.assert_close(m.res2img(r, up01 * 2 - 1), hr * 2 - 1)
    assert float(m.img2res(torch.ones(1), -torch.ones(1))) == 1.0


# --- tiny configs through the training loop and `ecdp sr` -------------------------------
SHORT = {
    "sr3": [{"name": "score", "kind": "score", "steps": 3, "batch": 4, "lr": 5e-4}],
    "sr3pp": [{"name": "score", "kind": "score", "steps": 2, "batch": 4, "lr": 5e-4},
              {"name": "quality", "kind": "quality", "steps": 2, "batch": 2, "lr": 1e-4}],
    "srdiff": [{"name": "pretrain", "kind": "pretrain", "steps": 2, "batch": 4, "lr": 1e-3},
               {"name": "score", "kind": "score", "steps": 3, "batch": 4, "lr": 5e-4}],
    "srdiffpp": [{"name": "pretrain", "kind": "pretrain", "steps": 2, "batch": 4, "lr": 1e-3},
                 {"name": "score", "kind": "score", "steps": 2, "batch": 4, "lr": 5e-4},
                 {"name": "quality", "kind": "quality", "steps": 2, "batch": 2, "lr": 1e-4}],
}


# sr3pp (the quality stage through SR3's chain) is slow (> 5 s): CI runs it (.ci/run)
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n == "sr3pp" else n for n in SHORT])
def test_tiny_config_trains_and_super_resolves(tiny_data, tmp_path, name):
    from ecdp.cli import main as ecdp_main
    from ecdp.imageio import load_image, save_image
    from ecdp.training import train

    cfg = baseline_config(tiny_data, name, train={"stages": SHORT[name], "warmup": 1, "log_every": 1},
                          quality={"sampler": {"steps": 3}})
    final = train(cfg, tmp_path / "run")
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len([r for r in log if "event" not in r]) == sum(s["steps"] for s in SHORT[name])
    if name.endswith("pp"):
        assert any("quality" in r for r in log)
        assert [r["feature_net"] for r in log if r.get("event") == "quality_loss"] == ["tiny-random"]
    method, ck = load_method(final)
    assert ck["config"]["method"] == name.removesuffix("pp")
    lr = torch.rand(1, 3, 9, 7, generator=torch.Generator().manual_seed(0))  # odd size: pad, then crop
    sr, stats = method.super_resolve(lr, generator=torch.Generator().manual_seed(0))
    default_nfe = 100  # tiny-sr3: 100 re-spaced steps; SRDiff: its full 100-step chain
    assert sr.shape == (1, 3, 36, 28) and stats["nfe"] == default_nfe
    assert float(sr.min()) >= 0 and float(sr.max()) <= 1
    sr2, stats2 = method.super_resolve(lr, generator=torch.Generator().manual_seed(0), name="ddim", steps=4)
    assert sr2.shape == (1, 3, 36, 28) and stats2["nfe"] == 4 and stats2["sampler"] == "ddpm-ddim"
    again, _ = method.super_resolve(lr, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, sr)  # the generator fixes the whole chain
    # `ecdp sr` on the checkpoint, exactly as for ECDP
    save_image(lr[0], tmp_path / "in.png")
    rc = ecdp_main(["sr", "--checkpoint", str(final), str(tmp_path / "in.png"), "-o", str(tmp_path / "out"),
                    "--sampler", json.dumps({"steps": 3}), "--device", "cpu"])
    assert rc == 0
    assert load_image(tmp_path / "out" / "in.png").shape == (3, 36, 28)


def test_sr3_full_chain_is_default_and_schedule_is_replaceable():
    m = SR3({"model": {"arch": "custom", "inner_channels": 8, "channel_mults": [1, 2], "res_blocks": 1,
                       "attn_stages": [], "norm_groups": 4}}, {"scale": 4})
    opts = ddpm.sampler_options(m.sampler_defaults, m.cfg.get("sampler"))
    assert len(m.sampling_schedule(opts)) == 2000 and opts["name"] == "ancestral"
    assert len(m.sampling_schedule({**opts, "steps": 50})) == 50
    s = m.sampling_schedule({**opts, "schedule": {"kind": "linear", "T": 100, "beta_start": 1e-4, "beta_end": 0.1}})
    assert len(s) == 100 and float(s.betas[-1]) == pytest.approx(0.1)


# --- ECDP "without prob. flow" (Table 7) ---------------------------------------------
@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_ecdp_quality_through_reverse_sde_changes_weights(tiny_data):
    cfg = tiny_config(tiny_data, quality={"mode": "only", "sampler": {
        "name": "reverse_sde", "steps": 300, "checkpoint": True, "adjoint": False}})
    torch.manual_seed(0)
    m = build_method(cfg, meta_of(tiny_data))
    stage = {"kind": "quality", "lr": 1e-3, "encoder_lr": 1e-3}
    m.set_stage(stage)
    opt = torch.optim.Adam(m.param_groups(stage))
    hr, lr = patches(tiny_data, n=1, size=16)  # 300 steps forward + 300 recomputed: keep it small
    before = snapshot(m.unet)
    torch.manual_seed(1)
    losses = m.training_losses(hr, lr)
    assert set(losses) == {"quality"} and torch.isfinite(losses["quality"])
    losses["quality"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.unet.parameters())
    opt.step()
    assert changed(before, m.unet)
