"""The method-agnostic training loop: stages, Adam, warm-up, step decay, EMA, value
clipping, atomic checkpoints, exact resume, JSONL log and a progress bar.

The loop only calls the method contract (:mod:`ecdp.method`): ``set_stage``,
``param_groups``, ``stage_plan`` (EMA carry-over, EMA decay, init from the EMA
weights, validation), ``training_losses``, ``run_info``; it gives no meaning to stage
kinds.  Stages run in the order of ``train.stages``; each has ``kind`` (one of the
method's ``STAGE_KINDS``), ``steps``, ``batch``, ``lr``, optional ``milestones``
(learning rate halved at each), ``warmup`` and whatever the method reads
(``encoder_lr``, ``ema``, ``ema_decay``: 0 means no EMA, the final weights are the
live ones).

Determinism: the batch of global step ``k`` and every random number the method
draws at that step depend on ``(seed, k)`` only (the global torch RNG is reseeded
each step), so ``--resume`` after a kill reaches bit-identical weights on CPU.

Outputs in the run folder: ``config.yaml`` (resolved), ``provenance.json``,
``log.jsonl``, ``val.jsonl`` (if validation is on), ``checkpoint.pt`` (latest, full
state, for resume), ``final.pt`` (EMA weights + config + dataset meta, for inference),
and with ``keep_stages`` ``stages/stage<k>.pt``: the state after the first ``k`` stages
(weights, EMA and the log records so far).

Shared training prefixes: a run whose first ``k`` stages train exactly as another
run's (:func:`shared_stages`: the same stages, and a config that differs only in what
the later stages read, e.g. SR3++ after SR3, ECDP without the quality loss after
ECDP) starts from that run's ``stages/stage<k>.pt`` (``init_from``) instead of
training them again.
Because the batch and every random number of step ``j`` depend on ``(seed, j)`` only,
this gives the weights the run would reach alone (tests/test_training.py checks it
bit for bit on CPU); the paper's "++" and "without the quality loss" rows then differ from
their base row by the later stages only, as the paper's fine-tunes do.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from torch.utils.data import DataLoader
from .progress import bar as tqdm

from . import checkpoint as ckpt
from .checkpoint import PRECISIONS, all_finite
from . import config as config_mod
from .data import PairedImages, PatchSampler, TrainPatches, read_meta
from .distributed import World, batch_shard, shard
from .provenance import record
from .registry import build_method, count_params


#: keys of a resolved run config that do not change the trained weights
NON_TRAINING_KEYS = (("sampler",), ("train", "validate"), ("train", "log_every"), ("train", "checkpoint_every"),
                     ("data", "workers"), ("data", "pin_memory"), ("data", "persistent_workers"))


def training_part(cfg: dict, drop: tuple = ()) -> dict:
    """``cfg`` without :data:`NON_TRAINING_KEYS` and the top-level sections in ``drop``:
    the part that determines the trained weights.  A non-training key that a stage of
    ``cfg`` reads (``Method.STAGE_SECTIONS``: a distilled student's ``sampler`` is the
    grid it is trained for) stays, unless ``drop`` names it."""
    from .registry import method_class

    sections = getattr(method_class(cfg.get("method", "ecdp")), "STAGE_SECTIONS", {})
    kinds = {st.get("kind") for st in (cfg.get("train") or {}).get("stages") or [] if isinstance(st, dict)}
    read = {sec for kind in kinds for sec in sections.get(kind, ())}
    out = copy.deepcopy(cfg)
    for path in (*(k for k in NON_TRAINING_KEYS if k[0] not in read), *((d,) for d in drop)):
        node = out
        for p in path[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(path[-1], None)
    return out


def shared_stages(a: dict, b: dict) -> int:
    """How many leading stages two resolved run configs train identically: the largest
    ``k`` with the same first ``k`` stages, the same method, and configs equal once the
    stages after ``k`` and the config sections only those later stage kinds read
    (``Method.STAGE_SECTIONS``) are set aside.  0: nothing can be shared."""
    from .registry import method_class

    if a.get("method") != b.get("method"):
        return 0
    sections = getattr(method_class(a["method"]), "STAGE_SECTIONS", {})
    sa, sb = a["train"]["stages"], b["train"]["stages"]
    k = 0
    while k < min(len(sa), len(sb)) and sa[k] == sb[k]:
        k += 1
    for n in range(k, 0, -1):
        kinds = {st["kind"] for st in sa[:n]}
        later = tuple(sec for kind, secs in sections.items() if kind not in kinds for sec in secs)
        strip = [training_part(c, later) for c in (a, b)]
        for c in strip:
            c["train"].pop("stages", None)
        if strip[0] == strip[1]:
            return n
    return 0


class EMA:
    """Exponential moving average of a module's floating-point state."""

    def __init__(self, module: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: torch.nn.Module) -> None:
        for k, v in module.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].lerp_(v.detach(), 1.0 - self.decay)
            else:
                self.shadow[k].copy_(v)


def lr_factor(step_in_stage: int, warmup: int, milestones: list[int]) -> float:
    """Linear warm-up over ``warmup`` steps, then x0.5 at each milestone (released code)."""
    w = min(1.0, (step_in_stage + 1) / warmup) if warmup else 1.0
    return w * 0.5 ** sum(step_in_stage >= m for m in milestones or [])


def clip_gradients(params, clip: dict) -> None:
    if not clip or clip.get("max") in (None, 0):
        return
    if clip.get("kind", "value") == "value":
        torch.nn.utils.clip_grad_value_(params, clip["max"])
    else:
        torch.nn.utils.clip_grad_norm_(params, clip["max"])


class TrainingDiverged(ValueError):
    """A non-finite loss or weight: training stops before anything non-finite is saved."""


OUTCOME = "outcome.json"


def write_outcome(path: str | Path, status: str, reason: str = "", **extra) -> None:
    """The training job's record for the workflow (``ecdp train --outcome``): ``status``
    ``trained`` (``final.pt`` beside it) or ``diverged`` (no ``final.pt``; ``reason`` is
    the one-line error).  Written atomically; every later rule of the cell reads it, so
    a diverged cell lets the grid finish and says why (docs/ARCHITECTURE.md)."""
    from .evaluation import atomic_write_text

    atomic_write_text(path, json.dumps({"status": status, "reason": reason, **extra}, indent=2) + "\n")


def read_outcome(path: str | Path) -> dict:
    """``{"status": "trained" | "diverged", "reason": str}``.  A missing file is a run
    trained by hand (without ``--outcome``) when ``final.pt`` is beside it, else
    ``FileNotFoundError``: a missing record never counts as a failed training.  A record
    that says trained without its ``final.pt``, or that cannot be read, is ``ValueError``
    (one line each)."""
    path = Path(path)
    final = path.parent / "final.pt"
    if not path.exists():
        if final.exists():
            return {"status": "trained", "reason": ""}
        raise FileNotFoundError(f"neither {path} nor {final} exists: train the cell first")
    try:
        rec = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable training outcome ({e.__class__.__name__}); delete it and "
                         "train again") from None
    if not isinstance(rec, dict) or rec.get("status") not in ("trained", "diverged"):
        status = rec.get("status") if isinstance(rec, dict) else rec
        raise ValueError(f"{path}: unknown training outcome {status!r}")
    if rec["status"] == "trained" and not final.exists():
        raise ValueError(f"{path} says trained but {final} is missing: delete {path.name} and train again")
    return rec


def not_trained_reason(outcome: str | Path | None) -> str | None:
    """None when the outcome file says trained, else the reason the cell has no model."""
    if not outcome:
        return None
    rec = read_outcome(outcome)
    return None if rec["status"] == "trained" else (rec.get("reason") or f"training {rec['status']}")


def _collate(batch):
    hr, lr = zip(*batch)
    return torch.stack(hr), torch.stack(lr)


class _Shard(torch.utils.data.Sampler):
    """This rank's rows of each global batch of a :class:`PatchSampler` (ecdp.distributed)."""

    def __init__(self, sampler: PatchSampler, world: World):
        self.sampler, self.world = sampler, world

    def __iter__(self):
        for batch in self.sampler:
            yield shard(batch, self.world)

    def __len__(self):
        return len(self.sampler)


def make_loader(dataset: TrainPatches, stage: dict, seed: int, start_step: int, steps: int, workers: int,
                world: World = World(), pin_memory: bool = False, persistent_workers: bool = False):
    """The step-indexed global batches of a stage (rank's shard under DDP), ``workers``
    loader processes, pinned memory / persistent workers as the config's ``data`` says."""
    sampler = _Shard(PatchSampler(len(dataset), stage["batch"], seed, start_step, steps), world)
    return DataLoader(dataset, batch_sampler=sampler, collate_fn=_collate, num_workers=workers,
                      pin_memory=pin_memory, persistent_workers=persistent_workers and workers > 0)




def check_precision(tcfg: dict, device: torch.device) -> None:
    """``train.precision`` fp32 | bf16 | fp16 (fp16 needs CUDA: its GradScaler); the types of
    ``channels_last`` / ``compile`` are checked with every key by ``ecdp.config.resolve``."""
    p = tcfg.get("precision", "fp32")
    if p not in PRECISIONS:
        raise ValueError(f"train.precision: must be one of {', '.join(PRECISIONS)}, got {p!r}")
    if p == "fp16" and device.type != "cuda":
        raise ValueError("train.precision: fp16 needs a CUDA device (loss scaling); use bf16 on CPU")


class _Losses(torch.nn.Module):
    """The method's ``training_losses`` as a module's forward: what DDP wraps (and
    ``torch.compile`` compiles) so that its gradients are all-reduced by the standard engine."""

    def __init__(self, method):
        super().__init__()
        self.method = method

    def forward(self, hr, lr):
        return self.method.training_losses(hr, lr)


def _stage_seed(seed: int, step: int) -> int:
    return (seed * 7_919 + step * 104_729 + 12_345) % (2**63 - 1)


def _truncate_log(path: Path, last_step: int) -> None:
    """Keep the records of ``path`` (JSON lines) up to ``last_step``, written atomically."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text().splitlines():
        try:
            if int(json.loads(line).get("step", 0)) <= last_step:
                keep.append(line)
        except (ValueError, AttributeError, TypeError):
            continue   # a line cut by the kill
    with ckpt.atomic_open(path, "w") as f:
        f.write("".join(k + "\n" for k in keep))


class Trainer:
    def __init__(self, cfg: dict, out: str | Path, device: str = "cpu", init_from: str | Path | None = None,
                 keep_stages: bool = False):
        config_mod.check_stages(cfg)   # before any work: steps: -3, stages: [], stpes: ... are errors
        self.world = World.from_env()   # torchrun's ranks, or a world of one
        check_precision(cfg["train"], torch.device(device))
        for st in cfg["train"]["stages"]:   # the global batch must split over the ranks
            self.world.local_batch(int(st["batch"]))
        self.cfg, self.out = cfg, Path(out)
        self.device = self.world.start(device)
        self.init_from, self.keep_stages = (Path(init_from) if init_from else None), keep_stages
        self.init_info: dict = {}
        self.data_root = Path(cfg["data"]["root"]) / cfg["data"]["dataset"]
        self.meta = read_meta(self.data_root)
        self.method = build_method(cfg, self.meta).to(self.device)
        if cfg["train"].get("channels_last"):
            self.method.to(memory_format=torch.channels_last)
        self.stages = cfg["train"]["stages"]
        self.global_step = 0
        self.stage_index = 0
        self.step_in_stage = 0
        self._last_ema: EMA | None = None
        self.run_info: dict = {}  # what the method reported of its stages (ecdp.method.Method.run_info)

    # --- state -------------------------------------------------------------------
    def state(self, opt, ema) -> dict:
        return {"format": ckpt.FORMAT, "config": self.cfg, "meta": self.meta,
                "model": self.method.state_dict(), "ema": ema.shadow if ema else None,
                "optimizer": opt.state_dict() if opt else None, "global_step": self.global_step,
                "stage_index": self.stage_index, "step_in_stage": self.step_in_stage,
                "init_from": self.init_info.get("init_from")}

    def final(self, ema) -> dict:
        return {"format": ckpt.FORMAT, "config": self.cfg, "meta": self.meta,
                "model": ema.shadow if ema else self.method.state_dict(),
                "provenance": self.provenance(global_step=self.global_step, parameters=count_params(self.method))}

    def provenance(self, **extra) -> dict:
        """Seed, commit, device, versions (:func:`ecdp.provenance.record`), plus what the
        method reported of its stages (e.g. the feature network of ECDP's quality loss)."""
        extra = {**self.run_info, **self.init_info, **extra}
        return record(self.cfg.get("seed"), self.device, **extra)

    def stage_state(self, ema, logs: bool = True) -> dict:
        """The state at a stage boundary (what ``stages/stage<k>.pt`` holds): weights, EMA,
        position, and the log records so far (a run started from it continues them)."""
        st = self.state(None, ema)
        if logs:
            st["logs"] = {n: (self.out / n).read_text() if (self.out / n).exists() else ""
                          for n in ("log.jsonl", "val.jsonl")}
        return st

    def _start_from(self, path: Path) -> None:
        """Begin after the first ``k`` stages of another run (its ``stages/stage<k>.pt``),
        refused unless those stages train exactly as this run's (:func:`shared_stages`)."""
        if not path.exists():
            raise FileNotFoundError(f"--init-from {path}: no such stage state (the run it belongs to keeps them "
                                    "only with --keep-stages)")
        state = ckpt.load(path)
        k = int(state.get("stage_index", 0))
        if not 0 < k <= len(self.stages) or shared_stages(state["config"], self.cfg) < k:
            raise ValueError(f"--init-from {path}: its first {k} stage(s) were trained with another config than "
                             "this run's; it cannot start this run")
        self.method.load_state_dict(state["model"])
        self.global_step, self.stage_index, self.step_in_stage = int(state["global_step"]), k, 0
        self._last_ema = EMA(self.method, 0.0)
        self._last_ema.shadow = state["ema"]
        for name, text in (state.get("logs") or {}).items() if self.world.main else ():
            (self.out / name).write_text(text)
        self.init_info = {"init_from": {"path": str(path), "sha256": ckpt.sha256_file(path), "stages": k,
                                        "global_step": self.global_step}}

    # --- loop --------------------------------------------------------------------
    def run(self, resume: bool = False) -> Path:
        final = self.out / "final.pt"
        self.already_finished = False
        if final.exists():  # a finished run is left exactly as it is
            if not resume:
                raise FileExistsError(f"{self.out} holds a finished run (final.pt); choose another --out")
            if ckpt.load(final).get("config") != self.cfg:
                raise ValueError(f"{final} was trained with a different config; use a new --out or the same config")
            self.already_finished = True
            return final
        self.out.mkdir(parents=True, exist_ok=True)
        ck_path = self.out / "checkpoint.pt"
        resumed = None
        if resume and ck_path.exists():
            resumed = ckpt.load(ck_path)
            if resumed["config"] != self.cfg:
                raise ValueError(f"{ck_path} was written with a different config; use a new --out or the same config")
            self.method.load_state_dict(resumed["model"])
            self.global_step, self.stage_index = resumed["global_step"], resumed["stage_index"]
            self.step_in_stage = resumed["step_in_stage"]
            if resumed.get("optimizer") is None and resumed.get("ema") is not None:  # resumed at a stage boundary
                self._last_ema = EMA(self.method, 0.0)
                self._last_ema.shadow = resumed["ema"]
        elif ck_path.exists() and not resume:
            raise FileExistsError(f"{self.out} already holds a run; pass --resume to continue it or choose another --out")
        if resumed is None and self.init_from is not None:
            self._start_from(self.init_from)
        elif resumed is not None and resumed.get("init_from"):
            self.init_info = {"init_from": resumed["init_from"]}
        main = self.world.main   # under DDP only rank 0 writes files
        if main:
            (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg, sort_keys=False))
            (self.out / "provenance.json").write_text(json.dumps(self.provenance(), indent=2))
        seed = int(self.cfg.get("seed", 0))
        tcfg = self.cfg["train"]
        total = sum(s["steps"] for s in self.stages)
        bar = tqdm(total=total, initial=self.global_step, desc="train", unit="step", dynamic_ncols=True,
                   disable=not main)
        ema = self._last_ema   # resumed or started at a stage boundary (possibly the last)
        if main and resumed is None and not self.init_info:  # a fresh start: an earlier run's logs would mix in
            for name in ("log.jsonl", "val.jsonl"):
                (self.out / name).unlink(missing_ok=True)
        elif main:   # steps after the checkpoint are trained again: drop their records (no step logged twice)
            for name in ("log.jsonl", "val.jsonl"):
                _truncate_log(self.out / name, self.global_step)
        stage_file = self.out / "stages" / f"stage{self.stage_index}.pt"
        if main and self.keep_stages and resumed is not None and ema is not None and not stage_file.exists():
            ckpt.save(self.stage_state(ema), stage_file)   # killed between the boundary checkpoint and it
        try:   # the bar is closed before any error is printed (never glued onto its line)
            with open(self.out / "log.jsonl" if main else os.devnull, "a") as log:
                while self.stage_index < len(self.stages):
                    stage = self.stages[self.stage_index]
                    ema = self._run_stage(stage, seed, tcfg, log, bar, resumed)
                    resumed = None
                    self.stage_index += 1
                    self.step_in_stage = 0
                    log.flush()
                    if main:
                        ckpt.save(self.state(None, ema), ck_path)
                        if self.keep_stages:
                            ckpt.save(self.stage_state(ema), self.out / "stages" / f"stage{self.stage_index}.pt")
        finally:
            bar.close()
        self.world.barrier()   # every rank finished every step: only then is the run complete
        if main:
            ckpt.save(self.final(ema), final)
            if self.run_info:  # e.g. which feature network the quality loss used
                (self.out / "provenance.json").write_text(json.dumps(self.provenance(), indent=2))
        self.world.barrier()
        return final

    def _run_stage(self, stage: dict, seed: int, tcfg: dict, log, bar, resumed: dict | None):
        self.method.set_stage(stage)
        plan = self.method.stage_plan(stage)
        for event, info in self.method.run_info().items():
            self.run_info[event] = info
            log.write(json.dumps({"event": event, "step": self.global_step, **info}) + "\n")
        self.method.train()
        if plan.init_from_ema and self.step_in_stage == 0 and self._last_ema is not None:
            self.method.load_state_dict(self._last_ema.shadow)  # e.g. the released fine-tune
        groups = self.method.param_groups(stage)
        for g in groups:
            g["initial_lr"] = g["lr"]
        opt = torch.optim.Adam(groups)
        decay = plan.ema_decay if plan.ema_decay is not None else tcfg.get("ema_decay")
        ema = EMA(self.method, float(decay or 0.0))
        if plan.ema == "carry" and self._last_ema is not None and self.step_in_stage == 0:
            # training continues: the EMA goes on from the previous stage's average (with
            # init_from_ema the live weights were just set to it, so this is the same)
            ema.shadow = {k: v.detach().clone().to(self.device) for k, v in self._last_ema.shadow.items()}
        if resumed is not None and resumed.get("optimizer") is not None:
            opt.load_state_dict(resumed["optimizer"])
            ema.shadow = {k: v.to(self.device) for k, v in resumed["ema"].items()}
        remaining = stage["steps"] - self.step_in_stage
        if remaining <= 0:
            return ema
        data = self.cfg["data"]
        dataset = TrainPatches(self.data_root, int(stage.get("patch", data["patch"])))
        loader = make_loader(dataset, stage, seed, self.global_step, remaining, int(data.get("workers", 0)),
                             self.world, bool(data.get("pin_memory")), bool(data.get("persistent_workers")))
        params = [p for g in groups for p in g["params"]]
        warmup = int(stage.get("warmup", tcfg.get("warmup", 0)))
        val_cfg = tcfg.get("validate") or {}
        module = self._loss_module()
        amp = PRECISIONS[tcfg.get("precision", "fp32")]
        scaler = torch.amp.GradScaler("cuda", enabled=amp is torch.float16)
        fmt = torch.channels_last if tcfg.get("channels_last") else torch.contiguous_format
        t0, n_img = time.perf_counter(), 0
        for hr, lr in loader:
            torch.manual_seed(_stage_seed(seed, self.global_step))
            hr = hr.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
            lr = lr.to(self.device, non_blocking=True).contiguous(memory_format=fmt)
            f = lr_factor(self.step_in_stage, warmup, stage.get("milestones"))
            for g in opt.param_groups:
                g["lr"] = g["initial_lr"] * f
            with batch_shard(self.world, int(stage["batch"])), \
                    torch.autocast(self.device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
                losses = module(hr, lr)
            loss = sum(v.float() for v in losses.values())
            # the losses averaged over ranks: what is logged, and what every rank tests for finiteness
            values = self.world.mean(torch.stack([v.detach().float() for v in losses.values()]))
            if not bool(torch.isfinite(values).all()):
                self._diverged(stage, "loss " + ", ".join(f"{k}={float(v):g}" for k, v in zip(losses, values)))
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            clip_gradients(params, tcfg.get("clip"))
            scaler.step(opt)
            scaler.update()
            if not all_finite(params):
                self._diverged(stage, "weights after the optimiser step")
            ema.update(self.method)
            self.global_step += 1
            self.step_in_stage += 1
            n_img += hr.shape[0] * self.world.size
            total = float(values.sum())
            bar.update(1)
            bar.set_postfix(stage=stage["name"], loss=f"{total:.4f}", refresh=False)
            if self.step_in_stage % int(tcfg.get("log_every", 50)) == 0 or self.step_in_stage == stage["steps"]:
                dt = time.perf_counter() - t0
                log.write(json.dumps({"step": self.global_step, "stage": stage["name"],
                                      **{k: float(v) for k, v in zip(losses, values)}, "loss": total,
                                      "lr": opt.param_groups[0]["lr"], "images_per_s": n_img / max(dt, 1e-9)}) + "\n")
                log.flush()
                t0, n_img = time.perf_counter(), 0
            if val_cfg.get("every") and self.step_in_stage % int(val_cfg["every"]) == 0 and plan.validate \
                    and self.world.main:
                self.validate(ema, stage, val_cfg)
            if self.step_in_stage % int(tcfg.get("checkpoint_every", 1000)) == 0 and self.step_in_stage < stage["steps"] \
                    and self.world.main:
                ckpt.save(self.state(opt, ema), self.out / "checkpoint.pt")
        self._last_ema = ema
        return ema

    def _loss_module(self):
        """``training_losses`` as a module: under DDP (torchrun) wrapped by
        ``DistributedDataParallel`` (gradients all-reduced, averaged over ranks; unused
        parameters of a stage allowed), compiled with ``train.compile``."""
        module = _Losses(self.method)
        if self.world.size > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            module = DistributedDataParallel(module, device_ids=ids, find_unused_parameters=True)
        if self.cfg["train"].get("compile"):
            module = torch.compile(module)
        return module

    def _diverged(self, stage: dict, what: str):
        ck = self.out / "checkpoint.pt"
        kept = f"{ck} keeps the last good state" if ck.exists() else "no checkpoint had been written yet"
        raise TrainingDiverged(f"training diverged at step {self.global_step + 1} (stage {stage['name']}): "
                               f"non-finite {what}; {kept}, no final.pt was written")

    @torch.no_grad()
    def validate(self, ema: EMA, stage: dict, val_cfg: dict) -> None:
        """LPIPS / PSNR / SSIM of EMA-weight SR on fixed validation patches (Figure 8)."""
        from .metrics import score

        live = copy.deepcopy(self.method.state_dict())
        self.method.load_state_dict(ema.shadow)
        self.method.eval()
        test = PairedImages(self.data_root, "test")
        n, p = int(val_cfg.get("patches", 8)), int(val_cfg.get("patch", 64))
        s = test.scale
        rows = []
        g = torch.Generator().manual_seed(1234)
        for i in range(n):
            hr, lr, _ = test[i % len(test)]
            lp = p // s
            top = int(torch.randint(lr.shape[-2] - lp + 1, (1,), generator=g))
            left = int(torch.randint(lr.shape[-1] - lp + 1, (1,), generator=g))
            lr_c = lr[:, top:top + lp, left:left + lp]
            hr_c = hr[:, top * s:(top + lp) * s, left * s:(left + lp) * s]
            sr, _ = self.method.super_resolve(lr_c[None].to(self.device), generator=torch.Generator(self.device).manual_seed(i))
            rows.append(score(sr[0].cpu(), hr_c))
        self.method.load_state_dict(live)
        self.method.train()
        rec = {"step": self.global_step, "stage": stage["name"]}
        for k in ("lpips", "psnr", "ssim"):
            rec[k] = sum(r[k] for r in rows) / len(rows)
        with open(self.out / "val.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")


def train(cfg: dict, out: str | Path, resume: bool = False, device: str = "cpu", init_from=None,
          keep_stages: bool = False) -> Path:
    torch.manual_seed(int(cfg.get("seed", 0)))  # initial weights
    return Trainer(cfg, out, device, init_from=init_from, keep_stages=keep_stages).run(resume=resume)


def add_cli(p):
    p.add_argument("--config", required=True, help="run config (YAML)")
    p.add_argument("--out", required=True, help="run folder (checkpoints, logs)")
    p.add_argument("--resume", action="store_true", help="continue a killed run in --out")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override config values, e.g. seed=1")
    p.add_argument("--init-from", metavar="STAGE_STATE",
                   help="start after the first k stages of another run (its stages/stage<k>.pt), refused unless "
                        "those stages train exactly as this config's")
    p.add_argument("--keep-stages", action="store_true",
                   help="keep the state after each stage in OUT/stages/stage<k>.pt (for --init-from)")
    p.add_argument("--outcome", metavar="FILE",
                   help="write FILE (JSON): trained, or diverged with the reason; a diverged run then exits 0 "
                        "(the workflow's record, so that the other cells finish)")
    p.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="train with N data-parallel processes on this machine (torchrun --standalone; one GPU "
                        "each, or gloo on CPU); the stages' batch is the global batch. Under torchrun: not needed")


def launch(argv: list[str], nproc: int) -> int:
    """``ecdp train ... --nproc N``: the same command under ``torchrun --standalone``
    (the standard launcher; a multi-node run calls torchrun itself)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "ecdp.cli", "train", *argv]
    return subprocess.run(cmd).returncode


def _argv(args) -> list[str]:
    """The ``ecdp train`` arguments of ``args`` without ``--nproc`` (what each rank runs)."""
    argv = ["--config", args.config, "--out", args.out, "--device", args.device]
    argv += ["--resume"] * bool(args.resume) + ["--keep-stages"] * bool(args.keep_stages)
    argv += ["--init-from", args.init_from] if args.init_from else []
    argv += ["--outcome", args.outcome] if args.outcome else []
    return argv + (["--set", *args.set] if args.set else [])


def run_cli(args) -> int:
    from .cli import CLIError

    world = World.from_env()
    if args.nproc < 1:
        raise CLIError(f"--nproc must be >= 1, got {args.nproc}")
    if args.nproc > 1 and world.size == 1:
        if args.outcome:
            Path(args.outcome).unlink(missing_ok=True)
        rc = launch(_argv(args), args.nproc)
        if rc:
            raise CLIError(f"training with {args.nproc} processes failed (exit code {rc}; the failing rank's "
                           "error is above)")
        return 0
    if args.outcome:
        if world.main:   # a stale record never outlives a new attempt (one process touches it)
            Path(args.outcome).unlink(missing_ok=True)
        base = Path(args.init_from).parent.parent / OUTCOME if args.init_from else None
        why = None
        if base is not None and not Path(args.init_from).exists() and base.exists():
            try:
                why = not_trained_reason(base)
            except (FileNotFoundError, ValueError) as e:
                raise CLIError(str(e)) from None
        if why:   # the run this one starts from diverged: this one has no model either
            if world.main:
                write_outcome(args.outcome, "diverged", f"starts from {args.init_from}, whose {why}")
                print(f"not trained: starts from a run that has no model ({why}); recorded in {args.outcome}")
            world.stop()
            return 0
    try:
        cfg = config_mod.load(args.config, config_mod.parse_overrides(args.set))
        torch.manual_seed(int(cfg.get("seed", 0)))  # initial weights, as train()
        trainer = Trainer(cfg, args.out, args.device, init_from=args.init_from, keep_stages=args.keep_stages)
        final = trainer.run(resume=args.resume)
    except TrainingDiverged as e:
        if not args.outcome:
            raise CLIError(f"rank {world.rank} of {world.size}: {e}" if world.size > 1 else str(e)) from None
        if world.main:
            write_outcome(args.outcome, "diverged", str(e))
            print(f"ecdp train: {e} (recorded in {args.outcome})", file=sys.stderr)
        return 0
    except (FileNotFoundError, FileExistsError, ValueError) as e:
        raise CLIError(f"rank {world.rank} of {world.size}: {e}" if world.size > 1 else str(e)) from None
    finally:
        world.stop()
    if world.main:
        if args.outcome:
            write_outcome(args.outcome, "trained", final=str(final))
        print(f"already finished, left as it is: {final}" if trainer.already_finished else f"trained: {final}")
    return 0
