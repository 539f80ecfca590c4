"""The distilled few-step student (issue 17; ecdp.model.ECDP.distill_loss): its config
rules, its loss against its definition through the public samplers, training from the
teacher's stage state, and the grid's wiring of teacher and start."""
from __future__ import annotations

import copy

import pytest
import torch

from ecdp import checkpoint as ckpt
from ecdp import config as config_mod
from ecdp.checkpoint import load_method
from ecdp.grid import Grid, load_workflow_config
from ecdp.model import ECDP
from ecdp.sampling import sample_dpmpp_1, sample_ode
from ecdp.training import train

from helpers import tiny_config
from helpers.tiny import ROOT

TEACHER = {"train": {"checkpoint_every": 100, "log_every": 1, "warmup": 0, "validate": {"every": 0}, "stages": [
    {"name": "pretrain", "kind": "pretrain", "steps": 2, "batch": 2, "lr": 1e-3},
    {"name": "score", "kind": "score", "steps": 3, "batch": 2, "lr": 5e-4, "encoder_lr": 1e-4}]}}
DISTILL = {"name": "distill", "kind": "distill", "steps": 2, "batch": 2, "lr": 1e-4, "warmup": 0}
CHEAP = {"method": "dopri5", "atol": 1e-2, "rtol": 1e-2}   # the teacher's solve, at a plumbing tolerance


def student_config(tiny_data, teacher: str, k: int = 1, **more) -> dict:
    """tiny.yaml without its sampler section (a student's is its own), TEACHER's stages and a distill stage."""
    user = config_mod.load(ROOT / "config" / "tiny.yaml")
    user.pop("sampler")
    over = copy.deepcopy(TEACHER)
    over["train"]["stages"].append(dict(DISTILL))
    over = {**over, "data": {"root": str(tiny_data), "dataset": "tiny4x"}, "quality": {"feature_net": "tiny-random"},
            "sampler": {"name": "dpmpp_1", "steps": k}, "distill": {"teacher": teacher, "teacher_sampler": CHEAP},
            **more}
    return config_mod.resolve(config_mod.deep_merge(user, over))


def test_student_config_rules(tiny_data):
    cfg = student_config(tiny_data, "t.pt", k=2)
    assert cfg["sampler"] == {"name": "dpmpp_1", "steps": 2}   # replaced, no dopri5 tolerances carried over
    bad = [({"sampler": {"name": "ode"}}, "samples with the sampler it is distilled for"),
           ({"sampler": {"name": "dpmpp_2m", "steps": 2}}, "samples with the sampler it is distilled for"),
           ({"distill": {"teacher": ""}}, "distill.teacher"),
           ({"distill": {"teacher": "t.pt", "teacher_sampler": {"atol": -1}}}, "atol"),
           ({"distill": {"teacher": "t.pt", "teacher_sampler": {"t_end": 0.5}}}, r"no option\(s\) \['t_end'\]")]
    for more, message in bad:
        with pytest.raises(ValueError, match=message):
            student_config(tiny_data, "t.pt", **more)
    stages = copy.deepcopy(TEACHER["train"]["stages"])
    with pytest.raises(ValueError, match="one distill stage, the last"):
        student_config(tiny_data, "t.pt", train={"stages": [DISTILL] + stages})
    # a student samples only with its own grid
    ECDP.check_sampler(cfg, {})
    ECDP.check_sampler(cfg, {"steps": 2})
    for other in ({"name": "ode"}, {"steps": 1}, {"grid": "edm"}):
        with pytest.raises(ValueError, match="only with the sampler it was distilled for"):
            ECDP.check_sampler(cfg, other)
    # an ECDP run config without a distill stage has no distill section (its training key is unchanged)
    assert "distill" not in tiny_config(tiny_data)


def _save_final(model, cfg, path):
    ckpt.save({"format": ckpt.FORMAT, "config": cfg, "meta": model.meta, "model": model.state_dict()}, path)
    return str(path)


def test_one_step_loss_is_the_dpmpp_1_step_against_the_teachers_ode(tiny_data, tmp_path):
    """K = 1: the loss is ||dpmpp_1(student, 1 step) - sample_ode(teacher)||^2 / sigma^2,
    summed per sample, on the same x(T): computed here through the public samplers."""
    meta = {"scale": 4, "sigma2": 0.01}
    torch.manual_seed(0)
    teacher = ECDP(tiny_config(tiny_data), meta)
    path = _save_final(teacher, tiny_config(tiny_data), tmp_path / "teacher.pt")
    cfg = student_config(tiny_data, path, k=1)
    torch.manual_seed(1)
    student = ECDP(cfg, meta)                       # other weights than the teacher's
    student.set_stage(DISTILL)
    lr = torch.rand(2, 3, 8, 8)
    hr = torch.rand(2, 3, 32, 32)
    torch.manual_seed(7)
    loss = student.distill_loss(hr, lr)
    teacher.eval()
    with torch.no_grad():
        torch.manual_seed(7)
        mu = student.mu(lr)
        x_T = student.sde.prior_sample(mu, student.sigma2)
        want_x0, _ = sample_ode(teacher.denoiser(mu, teacher.encoder(lr)), x_T, mu, teacher.sigma2, teacher.sde,
                                **CHEAP)
        got_x0, stats = sample_dpmpp_1(student.denoiser(mu, student.encoder(lr)), x_T, mu, student.sigma2,
                                       student.sde, steps=1)
    want = ((got_x0 - want_x0) / student.sigma2.sqrt()).pow(2).flatten(1).sum(1).mean()
    assert stats["nfe"] == 1
    assert float(loss.detach()) > 0
    torch.testing.assert_close(loss.detach(), want, rtol=1e-4, atol=1e-6)
    assert not any("teacher" in k for k in student.state_dict())   # the teacher stays out of the checkpoint


def test_two_step_loss_takes_each_interval_from_the_teachers_trajectory(tiny_data, tmp_path):
    """K = 2: the mean over both intervals of the student's dpmpp_1 step from the teacher's
    x(t_i), one interval at a time, against the teacher's x(t_{i+1})."""
    from ecdp.sampling import exp_step, log_snr, ode_trajectory, time_grid

    meta = {"scale": 4, "sigma2": 0.01}
    torch.manual_seed(0)
    teacher = ECDP(tiny_config(tiny_data), meta).eval()
    path = _save_final(teacher, tiny_config(tiny_data), tmp_path / "teacher.pt")
    torch.manual_seed(1)
    student = ECDP(student_config(tiny_data, path, k=2), meta)
    student.set_stage(DISTILL)
    lr, hr = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 32, 32)
    torch.manual_seed(7)
    loss = student.distill_loss(hr, lr)
    with torch.no_grad():
        torch.manual_seed(7)
        mu = student.mu(lr)
        x_T = student.sde.prior_sample(mu, student.sigma2)
        ts = time_grid(student.sde, 2, x_T.dtype)
        xs, _ = ode_trajectory(teacher.denoiser(mu, teacher.encoder(lr)), x_T, mu, teacher.sigma2, teacher.sde, ts,
                               **CHEAP)
        lam = log_snr(student.sde, ts.double())
        d = student.denoiser(mu, student.encoder(lr))
        per = []
        for i in range(2):
            t, t_next = ts[i].expand(2), ts[i + 1].expand(2)
            step = exp_step(xs[i], d(xs[i], t), mu, student.sigma2, student.sde, t, t_next, float(lam[i + 1] - lam[i]))
            per.append(((step - xs[i + 1]) / student.sigma2.sqrt()).pow(2).flatten(1).sum(1))
    torch.testing.assert_close(loss.detach(), torch.cat(per).mean(), rtol=1e-4, atol=1e-6)


def test_a_teacher_with_another_prior_is_refused(tiny_data, tmp_path):
    meta = {"scale": 4, "sigma2": 0.01}
    teacher = ECDP(tiny_config(tiny_data), {"scale": 4, "sigma2": 0.02})
    path = _save_final(teacher, tiny_config(tiny_data), tmp_path / "teacher.pt")
    student = ECDP(student_config(tiny_data, path), meta)
    with pytest.raises(ValueError, match="another prior"):
        student.set_stage(DISTILL)
    student = ECDP(student_config(tiny_data, str(tmp_path / "missing.pt")), meta)
    with pytest.raises(FileNotFoundError, match="distill.teacher"):
        student.set_stage(DISTILL)


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_two_step_student_trains_from_the_teachers_stage_state(tiny_data, tmp_path, capsys):
    """The student starts from the teacher's stage state (its EMA weights), trains with
    the loop, samples in K NFE, and the sampler study scores it against the teacher's
    accurate solution of the same x(T)."""
    from ecdp.sampler_study import sampler_study

    teacher_cfg = tiny_config(tiny_data, **TEACHER)
    train(teacher_cfg, tmp_path / "teacher", keep_stages=True)
    state = str(tmp_path / "teacher" / "stages" / "stage2.pt")
    cfg = student_config(tiny_data, state, k=2)
    capsys.readouterr()
    final = train(cfg, tmp_path / "student", init_from=state)
    assert "training checkpoint" not in capsys.readouterr().err   # the teacher's stage state is asked for
    records = [r for r in map(__import__("json").loads, (tmp_path / "student" / "log.jsonl").read_text().splitlines())
               if r.get("stage") == "distill"]
    assert records and all(r["distill"] > 0 for r in records)
    student, ck = load_method(final)
    teacher, _ = load_method(tmp_path / "teacher" / "final.pt")
    assert ck["model"].keys() == ckpt.load(tmp_path / "teacher" / "final.pt")["model"].keys()
    lr = torch.rand(1, 3, 8, 8)
    sr, stats = student.super_resolve(lr, generator=torch.Generator().manual_seed(0))
    assert stats["nfe"] == 2 and sr.shape == (1, 3, 32, 32)
    df = sampler_study(teacher, tiny_data / "tiny4x", [{"name": "ode", **CHEAP}], limit=1, accurate=0,
                       students={"ecdp-2step": student})
    row = df[df["family"] == "student"].iloc[0]
    assert row["sampler"].startswith("student:ecdp-2step") and row["nfe"] == 2
    assert 0 < row["solver_rmse"] < 255


def test_grid_starts_each_student_from_its_teacher_and_names_it():
    grid = Grid(load_workflow_config(ROOT / "config" / "default.yaml"), ROOT)
    keys = set()
    for v, k in (("ecdp-1step", 1), ("ecdp-2step", 2)):
        cell = grid.cell("embedded-div2k", v)
        assert cell.init_from == ("ecdp-hybrid-c1.0", 3) and not cell.shares_training
        cfg = cell.run_config(1)
        assert cfg["distill"]["teacher"] == grid.init_state("results", cell, 1)
        assert cfg["distill"]["teacher"].endswith("ecdp-hybrid-c1.0/seed1/train/stages/stage3.pt")
        assert cfg["sampler"] == {"name": "dpmpp_1", "steps": k}
        keys.add(grid.checkpoint("results", cell, 1))
    assert len(keys) == 2   # two training jobs: a student's sampler is a training key
    config = load_workflow_config(ROOT / "config" / "default.yaml")
    config["variants"]["ecdp-1step"]["add_stages"] = [{**DISTILL}, {**DISTILL, "name": "distill2"}]
    with pytest.raises(ValueError, match="one distill stage, the last"):
        Grid(config, ROOT)
    config = load_workflow_config(ROOT / "config" / "default.yaml")
    config["studies"] = {"table1": {"dataset": "div2k", "variants": ["ecdp-1step"]}}
    with pytest.raises(ValueError, match="distill.teacher: init needs a cell"):
        Grid(config, ROOT)


@pytest.mark.slow   # two short trainings and a kill: CI runs it
def test_killed_distill_stage_resumes_bit_identically(tiny_data, tmp_path, monkeypatch):
    """The teacher is rebuilt on resume outside the run's RNG: the resumed student is the
    uninterrupted one, bit for bit (the loop's determinism, kept by the distill stage)."""
    teacher_cfg = tiny_config(tiny_data, **TEACHER)
    train(teacher_cfg, tmp_path / "teacher", keep_stages=True)
    state = str(tmp_path / "teacher" / "stages" / "stage2.pt")
    cfg = student_config(tiny_data, state, k=2)
    cfg["train"]["stages"][-1]["steps"] = 4
    cfg["train"]["checkpoint_every"] = 2
    ref = ckpt.load(train(cfg, tmp_path / "ref", init_from=state))["model"]
    real, calls = ECDP.training_losses, {"n": 0}

    def dying(self, hr, lr):
        calls["n"] += 1
        if calls["n"] > 3:   # after the checkpoint at distill step 2
            raise KeyboardInterrupt
        return real(self, hr, lr)

    monkeypatch.setattr(ECDP, "training_losses", dying)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "run", init_from=state)
    monkeypatch.setattr(ECDP, "training_losses", real)
    resumed = ckpt.load(train(cfg, tmp_path / "run", resume=True, init_from=state))["model"]
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k
