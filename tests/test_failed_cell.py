"""A cell whose training diverges (issue 12, "Bad input and honesty"): ``ecdp train
--outcome`` records it and exits 0, evaluate / time write "not computed" results with
the reason, a run that starts from it is not trained either, and the report shows the
cell empty with the reason and its claims inconclusive.  The whole grid with a
diverging cell: tests/test_workflow.py (slow)."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from ecdp.cli import main
from helpers import tiny_config
from ecdp.training import not_trained_reason, read_outcome


def _config(tmp_path, tiny_data, lr):
    cfg = tiny_config(tiny_data)
    cfg["train"]["stages"] = [{"name": "score", "kind": "score", "steps": 3, "batch": 2, "lr": lr}]
    cfg["train"]["validate"] = {"every": 0}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def test_diverged_training_is_recorded(tmp_path, tiny_data, capsys):
    cfg = _config(tmp_path, tiny_data, 1e30)   # Adam at lr 1e30: non-finite within a few steps
    out = tmp_path / "run"
    # without --outcome a divergence is an error, as before
    assert main(["train", "--config", str(cfg), "--out", str(out), "--device", "cpu"]) == 2
    assert "training diverged at step" in capsys.readouterr().err
    rc = main(["train", "--config", str(cfg), "--out", str(out), "--device", "cpu", "--resume",
               "--outcome", str(out / "outcome.json")])
    assert rc == 0 and not (out / "final.pt").exists()
    rec = read_outcome(out / "outcome.json")
    assert rec["status"] == "diverged" and rec["reason"].startswith("training diverged at step")
    assert not_trained_reason(out / "outcome.json") == rec["reason"]

    # a run that starts from its (missing) stage state is recorded as not trained, with why
    later = tmp_path / "later"
    rc = main(["train", "--config", str(cfg), "--out", str(later), "--device", "cpu",
               "--init-from", str(out / "stages" / "stage1.pt"), "--outcome", str(later / "outcome.json")])
    assert rc == 0
    why = not_trained_reason(later / "outcome.json")
    assert why.startswith(f"starts from {out / 'stages' / 'stage1.pt'}, whose training diverged at step")

    # evaluate and time write results that say why, and nothing else
    ev = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(out / "final.pt"), "--outcome", str(out / "outcome.json"),
                 "--data", str(tiny_data / "tiny4x"), "--out", str(ev), "--variant", "bad", "--lpips-net", "none"]) == 0
    summary = json.loads((ev / "summary.json").read_text())
    assert summary["status"] == "not computed" and summary["reason"] == rec["reason"]
    assert (ev / "metrics.csv").read_text().strip() == "image,lpips,psnr,ssim,nfe,seconds"
    row = next(csv.DictReader((ev / "summary.csv").open()))
    assert row["status"] == "not computed" and row["lpips"] == ""
    t = tmp_path / "t.csv"
    assert main(["time", "--checkpoint", str(out / "final.pt"), "--outcome", str(out / "outcome.json"),
                 "--out", str(t)]) == 0
    assert list(csv.DictReader(t.open())) == []


def test_missing_or_bad_records_are_errors(tmp_path, tiny_data, capsys):
    """A missing record never counts as a failed training; a damaged one is one line."""
    run = tmp_path / "typo" / "train"
    with pytest.raises(FileNotFoundError, match="train the cell first"):
        not_trained_reason(run / "outcome.json")
    for cmd in (["evaluate", "--checkpoint", str(run / "final.pt"), "--outcome", str(run / "outcome.json"),
                 "--data", str(tiny_data / "tiny4x"), "--out", str(tmp_path / "ev")],
                ["time", "--checkpoint", str(run / "final.pt"), "--outcome", str(run / "outcome.json")]):
        assert main(cmd) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "train the cell first" in err[0]
    assert not (tmp_path / "ev").exists()
    run.mkdir(parents=True)
    (run / "outcome.json").write_text("{not json")
    assert main(cmd) == 2 and "not a readable training outcome" in capsys.readouterr().err
    (run / "outcome.json").write_text(json.dumps({"status": "trained"}))   # but no final.pt
    assert main(cmd) == 2 and "says trained but" in capsys.readouterr().err


def test_trained_outcome(tmp_path, tiny_data):
    cfg = _config(tmp_path, tiny_data, 1e-3)
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg), "--out", str(out), "--device", "cpu",
                 "--outcome", str(out / "outcome.json")]) == 0
    assert read_outcome(out / "outcome.json")["status"] == "trained" and (out / "final.pt").exists()
    assert not_trained_reason(out / "outcome.json") is None
    # a run trained by hand (no outcome file) counts as trained when final.pt is there
    (out / "outcome.json").unlink()
    assert not_trained_reason(out / "outcome.json") is None


def test_report_shows_the_reason(tmp_path):
    from ecdp.evaluation import write_not_computed
    from ecdp.report import claims as claims_mod
    from ecdp.report import tables as tables_mod

    results = tmp_path / "results"
    good = results / "runs/ds/good/seed0"
    good.mkdir(parents=True)
    (good / "summary.json").write_text(json.dumps({"variant": "good", "seed": 0, "lpips": 0.3, "psnr": 20.0,
                                                   "ssim": 0.5, "n_images": 1, "method": "m"}))
    (good / "metrics.csv").write_text("image,lpips,psnr,ssim,nfe,seconds\na,0.3,20,0.5,1,0.1\n")
    write_not_computed(results / "runs/ds/bad/seed0", "training diverged at step 2 (stage score): non-finite loss",
                       variant="bad", dataset="ds")
    runs = tables_mod.collect_runs(results)
    assert list(runs["variant"]) == ["good"]
    failed = tables_mod.collect_failures(results)
    assert failed == {("ds", "bad"): "seed 0: training diverged at step 2 (stage score): non-finite loss"}
    ctx = tables_mod.Context.from_runs(runs)
    ctx.failed = failed
    assert ctx.missing_reason("table1", "ds", "bad").startswith("not computed: seed 0: training diverged")
    df = claims_mod.test_claims(results, [{"id": "c", "dataset": "ds", "a": "good", "b": "bad", "metric": "lpips"}],
                                ctx)
    assert df.iloc[0]["verdict"] == "inconclusive" and "not computed: seed 0" in df.iloc[0]["note"]


@pytest.mark.parametrize("status", ["weird"])
def test_unknown_outcome_refused(tmp_path, status):
    (tmp_path / "outcome.json").write_text(json.dumps({"status": status}))
    with pytest.raises(ValueError, match="unknown training outcome"):
        read_outcome(tmp_path / "outcome.json")
