"""Training loop: a killed run resumed with --resume reaches bit-identical weights."""
import json

import pytest
import torch

from ecdp import checkpoint as ckpt
from ecdp.model import ECDP
from ecdp.training import Trainer, lr_factor, train

from ecdp.testing import tiny_config

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


@pytest.mark.parametrize("kill_at", [6, 11])  # mid-stage (after a checkpoint), and at a stage boundary
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
