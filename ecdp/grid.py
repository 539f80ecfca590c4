"""The experiment grid of a workflow config: which (dataset, variant, seed) cells run,
with which run config, and which cells share one training job.

Both the Snakefile (to create jobs) and ``ecdp report`` (to lay out tables and say why
a cell is empty) read the grid from here, so there is one definition of it.  It is the
workflow layer's module inside the package (docs/ARCHITECTURE.md, "Layers"): it reads
run configs, methods and the training loop, never :mod:`ecdp.report`, and it ships so
that ``python -m ecdp.grid clean-stale`` (the train rule) and ``ecdp report`` work from
an installed package as from a checkout.

A workflow config (``config/default.yaml``, ``config/paper.yaml``; schema in
``config/schema.yaml``) has

* ``datasets``: logical key (``div2k``, ``imagenet``, ``celeba``) -> prepared dataset
  name (the ``{dataset}`` wildcard, e.g. ``embedded-div2k``), the ``ecdp data prepare``
  argument that makes it, and settings applied to every method on it;
* ``methods``: method family -> base run config (a YAML file and/or inline settings)
  and per-dataset settings;
* ``variants``: name -> method family + settings (``set``) + stages to drop
  (``drop_stages``) or to append (``add_stages``: a distilled student's distill stage);
* ``studies``: which variants each table / figure needs on which dataset.

The run config of a cell is, later wins: the method's base file, the method's inline
settings, the dataset's settings, the method's per-dataset settings, the variant's
settings, study-specific settings (validation for Figure 8), then ``seed`` and
``data.{root,dataset}``; resolved by :func:`ecdp.config.resolve`.

Two cells whose resolved configs differ only in what does not change the trained
weights (test-time ``sampler``, ``train.validate``, logging and checkpoint cadence,
data-loader workers) share one training job: the first such cell in grid order owns
it (``trained_as``), the others only evaluate its checkpoint with their own sampler.

A training job whose first ``k`` stages train exactly as an earlier owner's
(:func:`ecdp.training.shared_stages`: SR3++ after SR3, SRDiff++ after SRDiff, ECDP
without L_quality and without prob. flow after ECDP) starts from that owner's state
after ``k`` stages (``init_from``; the owner keeps its stage states) instead of
training them again: the same weights for less work, and rows that differ from their
base row by the later stages only.
"""
from __future__ import annotations

import copy
import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import config as config_mod
from .model import DISCREPANCIES
from .training import shared_stages, training_part

#: Variant names the table builder knows (ecdp.report.tables maps paper rows to them).
MAIN_ECDP = "ecdp-hybrid-c1.0"
TOGGLE_PREFIX = "ecdp-paper-but-"
OFFICIAL = "ecdp-official"


REPO_ROOT = Path(__file__).resolve().parent.parent  # configs of a source checkout


@dataclass
class Cell:
    """One (dataset, variant) of the grid; runs once per seed."""

    dataset_key: str            # div2k / imagenet / celeba
    dataset: str                # prepared dataset name (the {dataset} wildcard)
    variant: str
    method: str                 # method family (ecdp, sr3, sr3pp, ...)
    user: dict                  # unresolved run config (without seed)
    studies: list[str] = field(default_factory=list)
    trained_as: str = ""        # the variant whose training job this cell uses
    eval_sampler: dict = field(default_factory=dict)  # sampler options passed to `ecdp evaluate`
    seeds: list[int] = field(default_factory=list)    # the seeds its studies run (Grid.study_seeds)
    init_from: tuple[str, int] | None = None          # (owner variant, k): starts after its first k stages
    teacher: Callable[[int], str] | None = None       # seed -> the stage state `distill.teacher: init` means

    def run_config(self, seed: int) -> dict:
        user = config_mod.deep_merge(self.user, {"seed": int(seed)})
        if self.teacher is not None:
            user = config_mod.deep_merge(user, {"distill": {"teacher": self.teacher(int(seed))}})
        cfg = config_mod.resolve(user)
        config_mod.check_stages(cfg)
        return cfg

    @property
    def shares_training(self) -> bool:
        return self.trained_as != self.variant


def training_key(resolved: dict) -> str:
    """Hash of the part of a resolved run config that determines the trained weights."""
    return hashlib.sha256(json.dumps(training_part(resolved), sort_keys=True, default=str).encode()).hexdigest()[:16]


def _set_path(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
    node[parts[-1]] = copy.deepcopy(value)


def discrepancy_overrides(name: str) -> dict:
    """Run-config settings that switch one discrepancy of :data:`ecdp.config.DISCREPANCIES`
    to the released code's value (everything else stays the paper protocol)."""
    paths, _paper, official = DISCREPANCIES[name]
    out: dict = {}
    for path in paths.split(","):
        _set_path(out, path.strip(), official)
    return out


def discrepancy_label(name: str) -> str:
    paths, paper, official = DISCREPANCIES[name]
    return f"{name}: {paths} = {official} (paper: {paper})"


#: A dataset or variant name: a path component that stays where it is put.
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def dataset_scale(name: str) -> int | None:
    """The SR scale of a registry dataset (None for a dataset the registry does not know)."""
    from .data.registry import get_spec

    try:
        return int(get_spec(name).scale)
    except KeyError:
        return None


def check_paths(config: dict) -> None:
    """Names and roots that would write outside the project's folders are refused:
    dataset and variant names must be plain path components (not ``..``); ``results``
    and ``data_root`` must not be empty, ``.``, the filesystem root, or climb with ``..``."""
    for what, names in (("dataset", [d.get("name", "") for d in (config.get("datasets") or {}).values()]),
                        ("variant", list((config.get("variants") or {}).keys()))):
        for name in names:
            if not isinstance(name, str) or not NAME.match(name) or set(name) <= {"."}:
                raise ValueError(f"{what} name {name!r} is not a plain folder name ([A-Za-z0-9][A-Za-z0-9_.+-]*)")
    for key, default in (("results", "results"), ("data_root", "data")):
        root = str(config.get(key, default))
        p = Path(root)
        if not root.strip() or p.parts in ((), (".",)) or p.resolve() == Path(p.anchor or "/") or ".." in p.parts:
            raise ValueError(f"{key}: {root!r} must be a folder below the working directory (or an absolute folder "
                             "other than /), without '..'")


class Grid:
    """The cells of a workflow config (see the module docstring)."""

    def __init__(self, config: dict, base_dir: str | Path = "."):
        check_paths(config)
        self.config = config
        self.base_dir = Path(base_dir)
        self.profile = config.get("profile", "custom")
        self.profile_label = config.get("profile_label", self.profile)
        self.seeds = [int(s) for s in config.get("seeds", [0])]
        self.data_root = str(config.get("data_root", "data"))
        self.datasets: dict = config.get("datasets", {})
        self.methods: dict = config.get("methods", {})
        self.variants: dict = self._all_variants()
        self.studies: dict = config.get("studies", {})
        self.cells: dict[tuple[str, str], Cell] = {}
        self.skipped: dict[str, str] = {}   # protocol rows skipped in this profile -> reason
        self._build()

    # --- variants ------------------------------------------------------------------
    def _all_variants(self) -> dict:
        variants = copy.deepcopy(self.config.get("variants", {}))
        proto = self.config.get("studies", {}).get("protocol")
        if proto:
            variants.setdefault(OFFICIAL, {"method": proto.get("method", "ecdp"), "set": {"protocol": "official"}})
            for name in DISCREPANCIES:
                variants.setdefault(TOGGLE_PREFIX + name, {
                    "method": proto.get("method", "ecdp"), "set": discrepancy_overrides(name)})
        return variants

    def _base(self, method: str) -> dict:
        m = self.methods.get(method)
        if m is None:
            raise ValueError(f"method {method!r} is used by a variant but not defined under `methods`")
        base: dict = {}
        if m.get("config"):
            path = Path(m["config"])
            if not path.is_absolute():
                candidates = [self.base_dir / path, REPO_ROOT / path]
                path = next((c for c in candidates if c.exists()), candidates[0])
            base = config_mod.yaml_load(path.read_text()) or {}
        return config_mod.merge_settings(base, m.get("set") or {})

    def user_config(self, dataset_key: str, variant: str, extra: dict | None = None) -> dict:
        if variant not in self.variants:
            raise ValueError(f"variant {variant!r} is not defined under `variants`")
        if dataset_key not in self.datasets:
            raise ValueError(f"dataset {dataset_key!r} is not defined under `datasets`")
        v = self.variants[variant]
        method = v.get("method", "ecdp")
        d = self.datasets[dataset_key]
        cfg = self._base(method)
        merge = config_mod.merge_settings   # a sampler naming another sampler replaces the section
        cfg = merge(cfg, d.get("set") or {})
        cfg = merge(cfg, (self.methods[method].get("datasets") or {}).get(dataset_key) or {})
        cfg = merge(cfg, v.get("set") or {})
        drop, add = set(v.get("drop_stages") or []), list(v.get("add_stages") or [])
        if add:   # after the method's stages (e.g. the distilled student's distill stage after ECDP's)
            stages = cfg.get("train", {}).get("stages")
            if stages is None:
                stages = config_mod.resolve(cfg)["train"]["stages"]
            cfg = config_mod.deep_merge(cfg, {"train": {"stages": list(stages) + add}})
        if drop:
            stages = cfg.get("train", {}).get("stages")
            if stages is None:  # the method's default stages
                stages = config_mod.resolve(cfg)["train"]["stages"]
            self._check_drop(variant, drop, stages)
            cfg = config_mod.deep_merge(cfg, {"train": {"stages": [s for s in stages if s.get("kind") not in drop
                                                                    and s.get("name") not in drop]}})
        cfg = config_mod.deep_merge(cfg, extra or {})
        cfg = config_mod.deep_merge(cfg, {"data": {"root": self.data_root, "dataset": d["name"]}})
        cfg.pop("seed", None)
        return cfg

    # --- cells -----------------------------------------------------------------------
    def study_seeds(self, study: str) -> list[int]:
        """The seeds a study runs: its own ``seeds`` (a list, or ``first``: the first of
        the config's seeds, for studies that cost more than a seed spread is worth),
        else the config's ``seeds``."""
        own = (self.studies.get(study) or {}).get("seeds") if isinstance(self.studies.get(study), dict) else None
        if own is None:
            return list(self.seeds)
        if own == "first":
            return self.seeds[:1]
        own = [int(x) for x in own]
        unknown = [x for x in own if x not in self.seeds]
        if unknown:
            raise ValueError(f"studies.{study}.seeds: {unknown} not in the config's seeds {self.seeds}")
        return own

    def _add(self, dataset_key: str, variant: str, study: str, extra: dict | None = None) -> Cell:
        name = self.datasets[dataset_key]["name"]
        key = (name, variant)
        cell = self.cells.get(key)
        if cell is None:
            method = self.variants.get(variant, {}).get("method", "ecdp")
            cell = Cell(dataset_key, name, variant, method, self.user_config(dataset_key, variant))
            self.cells[key] = cell
        if extra:
            cell.user = config_mod.deep_merge(cell.user, extra)
        if study not in cell.studies:
            cell.studies.append(study)
        cell.seeds = sorted(set(cell.seeds) | set(self.study_seeds(study)))
        return cell

    def _check(self) -> None:
        """Names the studies use must exist: one-line errors at dry-run time, not in a job."""
        for name, st in self.studies.items():
            if isinstance(st, dict) and "dataset" in st and st["dataset"] not in self.datasets:
                raise ValueError(f"studies.{name}.dataset: {st['dataset']!r} is not under `datasets` "
                                 f"(known: {', '.join(self.datasets)})")
        proto = self.studies.get("protocol") or {}
        unknown = set(proto.get("discrepancies") or {}) - set(DISCREPANCIES)
        if unknown:
            raise ValueError(f"studies.protocol.discrepancies: unknown {sorted(unknown)} "
                             f"(known: {', '.join(DISCREPANCIES)})")
        for key, row in (proto.get("discrepancies") or {}).items():
            if (row or {}).get("dataset") and row["dataset"] not in self.datasets:
                raise ValueError(f"studies.protocol.discrepancies.{key}.dataset: {row['dataset']!r} is not under "
                                 f"`datasets` (known: {', '.join(self.datasets)})")
        sam = self.studies.get("samplers") or {}
        acc = sam.get("accurate")
        if acc is not None and not (isinstance(acc, int) and 0 <= acc < len(sam.get("samplers") or [])):
            raise ValueError(f"studies.samplers.accurate: {acc!r} is not an index of studies.samplers.samplers "
                             f"(0..{len(sam.get('samplers') or []) - 1})")
        self._check_lr_crop(sam)
        unknown = [v for v in sam.get("students") or [] if v not in self.variants]
        if unknown:
            raise ValueError(f"studies.samplers.students: {unknown} not under `variants`")

    def _check_lr_crop(self, sam: dict) -> None:
        """The sampler study scores LPIPS-Alex on lr_crop x scale HR pixels: a crop too
        small for it fails at dry-run time (found by the rehearsal: after training)."""
        from .metrics import LPIPS_MIN_SIDE

        crop, ds = sam.get("lr_crop"), sam.get("dataset")
        if not crop or ds not in self.datasets:
            return
        scale = dataset_scale(self.datasets[ds]["name"])
        if scale and crop * scale < LPIPS_MIN_SIDE["alex"]:
            raise ValueError(f"studies.samplers.lr_crop: {crop} x scale {scale} = {crop * scale} px, below the "
                             f"{LPIPS_MIN_SIDE['alex']} px LPIPS-Alex needs (lr_crop >= "
                             f"{-(-LPIPS_MIN_SIDE['alex'] // scale)})")

    def _check_drop(self, variant: str, drop: set, stages: list) -> None:
        known = {s.get("kind") for s in stages} | {s.get("name") for s in stages}
        unknown = drop - known
        if unknown:
            raise ValueError(f"variants.{variant}.drop_stages: {sorted(unknown)} names no stage of its method "
                             f"(stages: {', '.join(str(s.get('name')) for s in stages)})")

    def _build(self) -> None:
        self._check()
        st = self.studies
        for table in ("table1", "table2", "table4", "table5", "table7", "table3"):
            s = st.get(table)
            if s:
                for v in s.get("variants", []):
                    self._add(s["dataset"], v, table)
        fig8 = st.get("figure8")
        if fig8:   # its own validation settings, else the variant's train.validate
            extra = {"train": {"validate": fig8["validate"]}} if fig8.get("validate") else None
            for v in fig8.get("variants", []):
                self._add(fig8["dataset"], v, "figure8", extra)
        proto = st.get("protocol")
        if proto:
            ds = proto["dataset"]
            self._add(ds, proto.get("paper_variant", MAIN_ECDP), "protocol")
            self._add(ds, proto.get("official_variant", OFFICIAL), "protocol")
            rows = proto.get("discrepancies") or {}
            for name in DISCREPANCIES:
                row = rows.get(name)
                if row is None:
                    self.skipped[name] = "not in this profile"
                    continue
                if row.get("skip"):
                    self.skipped[name] = str(row["skip"])
                    continue
                row_ds = row.get("dataset", ds)
                if row_ds != ds:   # its reference: the paper protocol on that dataset
                    self._add(row_ds, proto.get("paper_variant", MAIN_ECDP), "protocol")
                self._add(row_ds, TOGGLE_PREFIX + name, "protocol")
        sam = st.get("samplers")
        if sam:
            self._add(sam["dataset"], sam["variant"], "samplers")
            for v in sam.get("students") or []:   # distilled students of that model, every seed
                self._add(sam["dataset"], v, "students")
        self._assign_training()

    def _assign_training(self) -> None:
        owners: dict[str, Cell] = {}
        seed = self.seeds[0] if self.seeds else 0
        resolved = {key: cell.run_config(seed) for key, cell in self.cells.items()}
        for key, cell in self.cells.items():
            owner = owners.setdefault(training_key(resolved[key]), cell)
            cell.trained_as = owner.variant
            if owner is not cell:
                own = resolved[(owner.dataset, owner.variant)].get("sampler", {})
                mine = resolved[key].get("sampler", {})
                cell.eval_sampler = mine if mine != own else {}
        # shared prefixes: each training job starts after the longest prefix an earlier
        # owner (that does not itself start from another) trains identically
        done: list[Cell] = []
        for key, cell in self.cells.items():
            if cell.shares_training:
                continue
            best = None
            for base in done:
                if base.dataset != cell.dataset or base.init_from is not None:
                    continue
                k = shared_stages(resolved[(base.dataset, base.variant)], resolved[key])
                if k and (best is None or k > best[1]):
                    best = (base.variant, k)
            cell.init_from = best
            done.append(cell)
            self._fill_teacher(cell, resolved[key])

    def _fill_teacher(self, cell: Cell, resolved: dict) -> None:
        """``distill.teacher: init`` (a distilled student): the stage state the student's
        training starts from, which is its teacher's EMA after the teacher's stages, so
        teacher and starting weights are one file and can never differ."""
        if (resolved.get("distill") or {}).get("teacher") != "init":
            return
        k = len(resolved["train"]["stages"]) - 1
        if not cell.init_from or cell.init_from[1] != k:
            raise ValueError(f"variants.{cell.variant}: distill.teacher: init needs a cell on {cell.dataset} that "
                             f"trains its first {k} stage(s) (its teacher) before it in the grid; give a path instead")
        results = str(self.config.get("results", "results")).rstrip("/")
        cell.teacher = lambda seed, c=cell: self.init_state(results, c, seed)

    # --- queries ---------------------------------------------------------------------
    def cell(self, dataset: str, variant: str) -> Cell:
        try:
            return self.cells[(dataset, variant)]
        except KeyError:
            known = ", ".join(f"{d}/{v}" for d, v in self.cells)
            raise KeyError(f"{dataset}/{variant} is not a cell of the {self.profile} grid; cells: {known}") from None

    def dataset_name(self, key: str) -> str:
        return self.datasets[key]["name"]

    def training_cells(self) -> list[Cell]:
        return [c for c in self.cells.values() if not c.shares_training]

    def run_dir(self, results: str, cell: Cell, seed: int) -> str:
        return f"{results}/runs/{cell.dataset}/{cell.variant}/seed{seed}"

    def checkpoint(self, results: str, cell: Cell, seed: int) -> str:
        owner = self.cells[(cell.dataset, cell.trained_as)]
        return f"{self.run_dir(results, owner, seed)}/train/final.pt"

    def outcome(self, results: str, cell: Cell, seed: int) -> str:
        """The training job's record (``ecdp train --outcome``): the output of the train
        rule and the input of every rule that uses the model (``final.pt`` exists only
        when it says trained)."""
        from .training import OUTCOME

        return str(Path(self.checkpoint(results, cell, seed)).parent / OUTCOME)

    def training_seeds(self, cell: Cell) -> list[int]:
        """The seeds the training job of ``cell`` runs: those of every cell sharing it,
        and of every training job that starts from its stage states."""
        owner = cell.trained_as or cell.variant
        seeds = {s for c in self.cells.values() if c.dataset == cell.dataset
                 and (c.trained_as or c.variant) == owner for s in c.seeds}
        for c in self.init_dependents(self.cells[(cell.dataset, owner)]):
            seeds |= set(self.training_seeds(c))
        return sorted(seeds)

    def init_dependents(self, cell: Cell) -> list[Cell]:
        """The training jobs that start from ``cell``'s stage states (it keeps them)."""
        return [c for c in self.cells.values() if c.init_from and c.dataset == cell.dataset
                and c.init_from[0] == cell.variant and not c.shares_training]

    def init_state(self, results: str, cell: Cell, seed: int) -> str | None:
        """The stage state the training job of ``cell`` starts from, if any."""
        if not cell.init_from:
            return None
        base, k = cell.init_from
        return f"{self.run_dir(results, self.cells[(cell.dataset, base)], seed)}/train/stages/stage{k}.pt"

    def student_seeds(self) -> list[int]:
        """The seeds of the sampler study's students rows (``studies.samplers.students``):
        those every student cell runs."""
        sam = self.studies.get("samplers") or {}
        cells = [self.cells[(self.dataset_name(sam["dataset"]), v)] for v in sam.get("students") or []]
        return sorted(set.intersection(*(set(c.seeds) for c in cells))) if cells else []

    def cell_targets(self, results: str, name: str = "metrics.csv") -> list[str]:
        return [f"{self.run_dir(results, c, s)}/{name}" for c in self.cells.values() for s in c.seeds]

    def summary(self) -> list[dict]:
        """One row per cell: what the grid runs (for --dry-run listings and the README)."""
        return [{"dataset": c.dataset, "variant": c.variant, "method": c.method, "studies": ",".join(c.studies),
                 "trained_as": c.trained_as, "seeds": len(c.seeds),
                 "init_from": f"{c.init_from[0]} after {c.init_from[1]} stage(s)" if c.init_from else ""}
                for c in self.cells.values()]


def load_workflow_config(path: str | Path) -> dict:
    return config_mod.yaml_load(Path(path).read_text()) or {}


def clean_stale_training(run_yaml: str | Path, out_dir: str | Path, log=print) -> bool:
    """Before ``ecdp train --resume``: if ``out_dir`` holds a partial run written with a
    different config (the grid config changed since), remove its checkpoint and logs
    so training starts afresh instead of refusing to resume.  Returns True if removed."""
    out_dir = Path(out_dir)
    ck_path = out_dir / "checkpoint.pt"
    if not ck_path.exists():
        return False
    from . import checkpoint as ckpt

    want = config_mod.load(run_yaml)
    try:
        have = ckpt.load(ck_path).get("config")
    except (ValueError, FileNotFoundError):
        have = None
    if have == want:
        return False
    for name in ("checkpoint.pt", "log.jsonl", "val.jsonl", "final.pt", "outcome.json"):
        (out_dir / name).unlink(missing_ok=True)
    for state in (out_dir / "stages").glob("stage*.pt"):
        state.unlink()
    log(f"{out_dir}: partial training of another config removed; training starts afresh")
    return True


def main(argv: list[str] | None = None) -> int:
    """``python -m ecdp.grid cells CONFIG`` | ``clean-stale RUN_YAML TRAIN_DIR``."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m ecdp.grid")
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cells", help="list the cells of a workflow config")
    c.add_argument("config")
    s = sub.add_parser("clean-stale", help="remove a partial training written with another config")
    s.add_argument("run_yaml")
    s.add_argument("train_dir")
    args = p.parse_args(argv)
    if args.cmd == "cells":
        grid = Grid(load_workflow_config(args.config), Path(args.config).resolve().parent.parent)
        for row in grid.summary():
            print("\t".join(str(row[k]) for k in ("dataset", "variant", "method", "trained_as", "init_from",
                                                   "studies")))
        return 0
    clean_stale_training(args.run_yaml, args.train_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
