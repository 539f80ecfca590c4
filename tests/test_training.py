"""Training loop: a killed run resumed with --resume reaches bit-identical weights."""
import json

import pytest
import torch

from ecdp import checkpoint as ckpt
from ecdp.model import ECDP
from ecdp.training import Trainer, lr_factor, train

from helpers import tiny_config

SHORT = {"train": {"checkpoint_every": 3, "log_every": 2, "warmup": 2, "stages": [
    {"name": "pretrain", "kind": "pretrain", "steps": 4, "batch": 2, "lr": 1e-3},
    {"name": "score", "kind": "score", "steps": 7, "batch": 2, "lr": 5e-4, "encoder_lr": 1e-4, "milestones": [5]},
    {"name": "quality", "kind": "quality", "steps": 2, "batch": 1, "lr": 1e-5},
]}, "quality": {"init_from_ema": True}}


class Killed(Exception):
    pass


def test_lr_schedule():
    assert lr_factor(0, 4, []) == 0.25
    assert lr_factor(10, 4, [5, 8]) == 0.25
    assert lr_factor(3, 0, [3]) == 0.5


@pytest.mark.parametrize("kill_at", [pytest.param(k, marks=pytest.mark.slow) for k in (6, 11)])  # mid-stage; stage boundary
def test_resume_after_kill_is_bit_identical(tiny_data, tmp_path, monkeypatch, kill_at):
    cfg = tiny_config(tiny_data, **SHORT)
    ref = ckpt.load(train(cfg, tmp_path / "ref"))["model"]

    real = ECDP.training_losses
    calls = {"n": 0}

    def dying(self, hr, lr):
        calls["n"] += 1
        if calls["n"] > kill_at:
            raise Killed
        return real(self, hr, lr)

    monkeypatch.setattr(ECDP, "training_losses", dying)
    with pytest.raises(Killed):
        train(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "checkpoint.pt").exists() and not (tmp_path / "run" / "final.pt").exists()
    monkeypatch.setattr(ECDP, "training_losses", real)
    with pytest.raises(FileExistsError):
        train(cfg, tmp_path / "run")  # refuses to overwrite without --resume
    resumed = ckpt.load(train(cfg, tmp_path / "run", resume=True))["model"]
    assert resumed.keys() == ref.keys()
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k
    # the log of the resumed run is the uninterrupted run's: no step logged twice
    def records(run):
        return [(r["step"], r.get("stage")) for r in map(json.loads, (tmp_path / run / "log.jsonl").read_text().splitlines())
                if "step" in r and "event" not in r]
    assert records("run") == records("ref")


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_quality_stage_changes_weights_and_logs(tiny_data, tmp_path):
    cfg = tiny_config(tiny_data, **SHORT)
    t = Trainer(cfg, tmp_path / "q")
    final = ckpt.load(t.run())
    assert final["provenance"]["seed"] == 0 and final["provenance"]["git_commit"]
    log = (tmp_path / "q" / "log.jsonl").read_text().splitlines()
    assert any('"quality"' in line for line in log)
    assert (tmp_path / "q" / "config.yaml").exists()
    # the run records which feature network the quality loss used (log, final.pt, provenance.json)
    events = [json.loads(line) for line in log if '"event"' in line]
    assert [e["feature_net"] for e in events if e["event"] == "quality_loss"] == ["tiny-random"]
    assert final["provenance"]["quality_loss"]["feature_net"] == "tiny-random"
    assert json.loads((tmp_path / "q" / "provenance.json").read_text())["quality_loss"]["pretrained"] is False


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_fresh_start_does_not_append_to_old_logs(tiny_data, tmp_path):
    """`--resume` with no checkpoint is a fresh start: an older log.jsonl (a committed
    results/ folder, a cleaned-up run) must not be mixed into the new one."""
    cfg = tiny_config(tiny_data, **SHORT)
    out = tmp_path / "run"
    out.mkdir()
    (out / "log.jsonl").write_text('{"step": 999, "stage": "stale"}\n')
    train(cfg, out, resume=True)
    rows = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in rows if "event" not in r]
    assert "stale" not in {r.get("stage") for r in rows} and steps == sorted(steps) and steps


def _records(path):
    return [(r["step"], r.get("stage")) for r in map(json.loads, path.read_text().splitlines())
            if "step" in r and "event" not in r]


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_shared_prefix_gives_the_weights_of_the_run_alone(tiny_data, tmp_path):
    """A run started from another run's state after k stages (--init-from) ends with the
    weights and log records it reaches trained alone, bit for bit on CPU: the workflow's
    "without L_quality" / "without prob. flow" / "++" rows start from their base row."""
    import copy

    from ecdp.training import shared_stages

    base = tiny_config(tiny_data, **SHORT)                      # pretrain, score, quality: 2 + 3 + 1 steps
    for stage, steps in zip(base["train"]["stages"], (2, 3, 1)):
        stage["steps"] = steps
    noq = copy.deepcopy(base)                                   # "without L_quality": the first two stages,
    noq["train"]["stages"] = base["train"]["stages"][:2]        # a quality section its stages never read
    noq["quality"]["weight"] = 9.0
    other = copy.deepcopy(base)                                 # "without prob. flow": another quality stage
    other["quality"]["weight"] = 0.25
    assert (shared_stages(base, base), shared_stages(base, noq), shared_stages(base, other)) == (3, 2, 2)
    lr = copy.deepcopy(noq)
    lr["train"]["stages"][1]["lr"] = 1e-3
    assert shared_stages(base, lr) == 1
    train(base, tmp_path / "base", keep_stages=True)
    assert sorted(p.name for p in (tmp_path / "base" / "stages").iterdir()) == ["stage1.pt", "stage2.pt", "stage3.pt"]
    state = tmp_path / "base" / "stages" / "stage2.pt"
    for name, cfg in (("noq", noq), ("other", other)):
        alone = ckpt.load(train(cfg, tmp_path / f"{name}-alone"))["model"]
        shared = ckpt.load(train(cfg, tmp_path / name, init_from=state))
        assert shared["model"].keys() == alone.keys()
        for k in alone:
            assert torch.equal(alone[k], shared["model"][k]), (name, k)
        assert shared["provenance"]["init_from"]["stages"] == 2
        assert _records(tmp_path / name / "log.jsonl") == _records(tmp_path / f"{name}-alone" / "log.jsonl")
    # a prefix trained otherwise is refused, nothing trained
    with pytest.raises(ValueError, match="trained with another config"):
        train(lr, tmp_path / "lr", init_from=state)
    assert not (tmp_path / "lr" / "final.pt").exists()


@pytest.mark.slow   # > 5 s: CI runs it (.ci/run), the fast suite stays under 3 min
def test_killed_between_the_last_stage_and_final_resumes_to_the_ema_weights(tiny_data, tmp_path, monkeypatch):
    cfg = tiny_config(tiny_data, **SHORT)
    for stage, steps in zip(cfg["train"]["stages"], (2, 3, 1)):
        stage["steps"] = steps
    ref = ckpt.load(train(cfg, tmp_path / "ref"))["model"]
    real = ckpt.save

    def dying(obj, path):
        if str(path).endswith("final.pt"):
            raise Killed
        real(obj, path)

    monkeypatch.setattr(ckpt, "save", dying)
    with pytest.raises(Killed):
        train(cfg, tmp_path / "run")
    monkeypatch.setattr(ckpt, "save", real)
    resumed = ckpt.load(train(cfg, tmp_path / "run", resume=True))["model"]
    for k in ref:
        assert torch.equal(ref[k], resumed[k]), k
