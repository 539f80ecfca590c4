"""Methods as plugins (issue 15): the open registry, the method contract, and the example
package examples/l1net installed and run through `ecdp train / sr / evaluate` and the
tables, with no edit under ecdp/ (the workflow run of it is in test_workflow.py)."""
from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
import yaml

from ecdp import config as config_mod
from ecdp.cli import main
from ecdp.method import Method
from ecdp.registry import BUILTIN, method_class

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "l1net"


def install_example(target: Path) -> Path:
    """``pip install`` the example package into ``target`` (no network, no build isolation):
    a real installation, with its entry point, that a PYTHONPATH entry makes visible.
    Built from a copy, so the source tree gets no build/ or egg-info."""
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(shutil.copytree(EXAMPLE, Path(tmp) / "l1net"))
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(target), str(src)], check=True, capture_output=True, timeout=300)
    return target


@pytest.fixture(scope="module")
def example_site(tmp_path_factory):
    return install_example(tmp_path_factory.mktemp("site"))


@pytest.fixture
def with_example(example_site, monkeypatch):
    monkeypatch.syspath_prepend(str(example_site))
    import importlib
    importlib.invalidate_caches()
    return example_site


def test_builtin_methods_follow_the_contract():
    for name in BUILTIN:
        assert issubclass(method_class(name), Method), name


def test_module_class_and_unknown_names(monkeypatch):
    monkeypatch.syspath_prepend(str(EXAMPLE))
    cls = method_class("ecdp_l1net:L1Net")
    assert cls.__name__ == "L1Net" and issubclass(cls, Method)
    with pytest.raises(ValueError, match="unknown method 'nosuch'"):
        method_class("nosuch")
    with pytest.raises(ValueError, match="cannot import"):
        method_class("nosuch.module:Thing")


def test_entry_point_of_an_installed_package(with_example):
    cls = method_class("l1net")
    assert cls.__module__ == "ecdp_l1net"
    cfg = config_mod.resolve({"method": "l1net"})
    assert cfg["model"] == {"channels": 32, "blocks": 4} and cfg["train"]["stages"][0]["kind"] == "regress"
    assert not {"sde", "parametrization", "sampler", "quality"} & set(cfg)      # nothing of ECDP's
    with pytest.raises(ValueError, match="model.blocks"):
        config_mod.resolve({"method": "l1net", "model": {"blocks": 0}})


def test_example_through_train_sr_evaluate_and_the_tables(with_example, tiny_data, tmp_path, capsys):
    from ecdp.report import tables as T

    cfg = yaml.safe_load((EXAMPLE / "l1net.yaml").read_text())
    cfg["data"] = {"dataset": "tiny4x", "root": str(tiny_data), "patch": 16, "workers": 0}
    cfg["train"]["stages"][0].update(steps=4, batch=2)
    path = tmp_path / "l1net.yaml"
    path.write_text(yaml.safe_dump(cfg))
    run = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(run), "--device", "cpu"]) == 0
    assert (run / "final.pt").exists()
    lr = sorted((tiny_data / "tiny4x" / "test" / "LR").glob("*.png"))[0]
    assert main(["sr", "--checkpoint", str(run / "final.pt"), str(lr), "-o", str(tmp_path / "sr"), "--device", "cpu"]) == 0
    assert (tmp_path / "sr" / f"{lr.stem}.png").exists()
    ev = tmp_path / "results" / "runs" / "tiny4x" / "l1net" / "seed0"
    assert main(["evaluate", "--checkpoint", str(run / "final.pt"), "--data", str(tiny_data / "tiny4x"),
                 "--out", str(ev), "--lpips-net", "none", "--device", "cpu", "--no-progress", "--variant", "l1net"]) == 0
    summary = pd.read_csv(ev / "summary.csv").iloc[0]
    assert summary["method"] == "l1net" and summary["nfe"] == 1 and summary["psnr"] > 10
    # the tables: a variant without a paper row gets its own row, paper columns empty; a
    # renamed variant keeps its paper row through `paper_row`
    runs = T.collect_runs(tmp_path / "results")
    ctx = T.Context("custom", "custom", {"div2k": "tiny4x"}, {"table1": {("tiny4x", "l1net")}}, known_grid=True,
                    paper_rows={"my-l1net": ["RRDB"]}, labels={"l1net": "L1 regression (example)"},
                    study_variants={"table1": ["l1net"]})
    t1 = T.build_tables(runs, pd.DataFrame(), ctx)["table1"]
    mine = [r for r in t1.rows if r["variant"] == "l1net"]
    assert len(mine) == 1 and mine[0]["method"] == "L1 regression (example)"
    assert math.isnan(mine[0]["paper_lpips"]) and mine[0]["ours_psnr"] == pytest.approx(summary["psnr"])
    assert mine[0]["note"] == "not in the paper"
    ctx.study_variants = {"table1": ["my-l1net"]}
    rrdb = next(r for r in T.build_tables(runs, pd.DataFrame(), ctx)["table1"].rows if r["method"] == "RRDB")
    assert rrdb["variant"] == "my-l1net"                       # named by the config, not the code


def test_no_method_is_special_in_the_training_loop():
    """The loop reads no private attribute of a method and no stage kind (issue 15)."""
    src = (ROOT / "ecdp" / "training.py").read_text()
    for word in ("_quality", '"quality"', '"pretrain"', "'quality'", "'pretrain'"):
        assert word not in src, word
    assert torch.nn.Module in Method.__mro__
