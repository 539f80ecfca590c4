"""The paper's claims, tested on the grid's own numbers (docs/ARCHITECTURE.md, "Claims"),
and whether each trained model had converged.

**Claims.**  The workflow config's ``claims`` list names what the grid can test, each
entry ``{id, text, paper, kind, dataset(s), a, b(s), metric(s), test, margin}`` (lists
expand to one row per combination).  A ``quality`` claim compares variant ``a`` with
variant ``b`` on one dataset and metric, **paired** over (test image, seed): both cells
super-resolved the same images with the same seeds (and the same x(T) where the two
methods draw it alike).  The difference ``d = a - b`` (mean over pairs) gets a 95 %
interval from a paired bootstrap over the (image, seed) pairs (:data:`BOOTSTRAP`
resamples, fixed seed, percentile interval).  A ``speed`` claim compares seconds per
image of Table 3's timing runs (unpaired: bootstrap over each method's repeats).

The verdict is computed from the interval, never chosen.  With ``w`` the difference in
the "worse for a" direction (``d`` for LPIPS and seconds, ``-d`` for PSNR / SSIM):

* ``test: better`` ("a is below b in LPIPS"): *holds* if the whole interval of ``w`` is
  below 0, *contradicted* if it is above 0, else *inconclusive*;
* ``test: no_worse`` ("a no worse than b"), with the claim's ``margin`` m (in the
  metric's units): *holds* if the interval of ``w`` lies below m, *contradicted* if it
  lies above m, else *inconclusive*.

Fewer than :data:`MIN_PAIRS` pairs (or :data:`MIN_REPEATS` timing repeats) give the
difference without an interval, *inconclusive*.  A claim whose cells have no result is
*inconclusive* with the reason; a claim whose
cells did not converge (below) keeps its computed verdict and says so in its note.

**Convergence.**  :func:`plateau`: a training run has converged when its validation
LPIPS (``train.validate``: EMA weights, fixed patches of the test images and fixed
noise, as Figure 8; the embedded sets have no other held-out images; it selects
nothing, it only reports) improved by less than
:data:`PLATEAU_TOL` (3 %) relative over the last quarter of its last validated stage:
``moved = (L(q) - L(end)) / L(q)``, with ``L(end)`` the last validation and ``L(q)`` the
last one at or before three quarters of that stage.  A worse end (``moved < 0``) counts
as converged (no more improvement).  Every cell reports it; none is hidden.
"""
from __future__ import annotations

import itertools
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

BOOTSTRAP = 10000
BOOTSTRAP_SEED = 0
LEVEL = 0.95
PLATEAU_TOL = 0.03
#: fewest (image, seed) pairs an interval is computed from: the smallest n at which n
#: differences of one sign are significant at 5 % by a two-sided sign test (2 * 0.5^6 =
#: 0.031; n = 5 gives 0.0625).  Below it a percentile bootstrap still excludes 0 whenever
#: the pairs agree in sign (with 3 pairs: 10 distinct resampled means), so fewer pairs are
#: reported with their difference and "inconclusive (too few pairs)".
MIN_PAIRS = 6
MIN_REPEATS = 3
PLATEAU_FRACTION = 0.25
HIGHER_BETTER = {"lpips": False, "psnr": True, "ssim": True, "seconds": False}


# --------------------------------------------------------------------------- convergence

def plateau(val: list[dict], stages: list[dict], tol: float = PLATEAU_TOL,
            fraction: float = PLATEAU_FRACTION) -> dict:
    """Converged or not, from a run's validation records and its ``train.stages``
    (module docstring).  ``{"converged": None, ...}`` when the run has no validation."""
    if not val:
        return {"converged": None, "moved": math.nan, "reason": "no validation records"}
    ends, start = {}, 0
    for st in stages:
        ends[st.get("name")] = (start, start + int(st["steps"]))
        start += int(st["steps"])
    stage = val[-1].get("stage")
    a, b = ends.get(stage, (0, max(int(r["step"]) for r in val)))
    rows = sorted((r for r in val if r.get("stage") == stage), key=lambda r: int(r["step"]))
    q = b - fraction * (b - a)
    before = [r for r in rows if int(r["step"]) <= q]
    if not before or len(rows) < 2:
        return {"converged": None, "moved": math.nan, "reason": f"too few validations in stage {stage}"}
    lq, lend = float(before[-1]["lpips"]), float(rows[-1]["lpips"])
    moved = (lq - lend) / lq if lq else math.nan
    return {"converged": bool(moved < tol), "moved": moved, "stage": stage, "step_q": int(before[-1]["step"]),
            "step_end": int(rows[-1]["step"]), "lpips_q": lq, "lpips_end": lend}


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file (``val.jsonl``, ``log.jsonl``); a line cut by a kill is skipped."""
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def convergence(runs: pd.DataFrame) -> pd.DataFrame:
    """:func:`plateau` of the training run behind every evaluated run (its checkpoint's
    folder: ``val.jsonl`` and ``config.yaml``), one row per (dataset, variant, seed)."""
    rows = []
    if runs is None or runs.empty or "checkpoint" not in runs:
        return pd.DataFrame(columns=["dataset", "variant", "seed", "converged", "moved"])
    for r in runs.itertuples(index=False):
        # the training folder of the run's checkpoint (runs/<dataset>/<trained_as>/seed<N>/train), found
        # beside this run's folder: the stored path is relative to where the workflow ran
        ck = Path(str(r.checkpoint))
        train = ck.parent
        if getattr(r, "run_dir", None) and len(ck.parts) >= 4:
            train = Path(r.run_dir).parent.parent / ck.parts[-4] / ck.parts[-3] / ck.parts[-2]
        cfg_path, val_path = train / "config.yaml", train / "val.jsonl"
        try:
            stages = (yaml.safe_load(cfg_path.read_text()) or {}).get("train", {}).get("stages") or []
        except (OSError, yaml.YAMLError):
            stages = []
        if not stages:
            res = {"converged": None, "moved": math.nan, "reason": "nothing trained"}
        elif not val_path.exists():
            res = {"converged": None, "moved": math.nan, "reason": "no validation records"}
        else:
            res = plateau(read_jsonl(val_path), stages)
        rows.append({"dataset": r.dataset, "variant": r.variant, "seed": r.seed, **res})
    return pd.DataFrame(rows)


def convergence_summary(conv: pd.DataFrame) -> dict[tuple[str, str], dict]:
    """(dataset, variant) -> ``{"text", "converged"}``: "yes (+0.4 %)" / "no (+8.1 %)" /
    "2/3 seeds (max +5.2 %)" / "n/a (nothing trained)", the relative LPIPS improvement of
    the last quarter (positive: still improving); ``converged`` True only if every seed
    converged, None if nothing was trained or validated."""
    out = {}
    if conv is None or conv.empty:
        return out
    for (ds, var), g in conv.groupby(["dataset", "variant"], sort=False):
        known = g[g["converged"].notna()]
        if known.empty:
            reason = next((str(x) for x in g.get("reason", pd.Series(dtype=str)).dropna()), "no validation")
            out[(ds, var)] = {"text": f"n/a ({reason})", "converged": None}
            continue
        worst = max(100 * float(m) for m in known["moved"])
        n_ok = int(known["converged"].astype(bool).sum())
        text = (f"{'yes' if n_ok else 'no'} ({worst:+.1f} %)" if len(known) == 1
                else f"{n_ok}/{len(known)} seeds (max {worst:+.1f} %)")
        out[(ds, var)] = {"text": text, "converged": n_ok == len(known)}
    return out


# --------------------------------------------------------------------------- claims

def expand(claims: list[dict]) -> list[dict]:
    """One row per combination of the list-valued ``datasets`` / ``as`` / ``bs`` /
    ``metrics``; the row id names the parts that vary (``ecdp-vs-baselines/div2k/sr3/lpips``)."""
    out = []
    for c in claims or []:
        lists = {"dataset": c.get("datasets") or [c.get("dataset")], "a": c.get("as") or [c.get("a")],
                 "b": c.get("bs") or [c.get("b")], "metric": c.get("metrics") or [c.get("metric", "lpips")]}
        varying = [k for k, v in lists.items() if len(v) > 1]
        for combo in itertools.product(*lists.values()):
            row = {k: v for k, v in c.items() if k not in ("datasets", "as", "bs", "metrics")}
            row.update(dict(zip(lists, combo)))
            row["id"] = "/".join([str(c.get("id", "claim"))] + [str(row[k]) for k in varying])
            out.append(row)
    return out


def bootstrap_interval(values: np.ndarray, n: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED,
                       level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean of ``values`` (resampled with replacement)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def unpaired_interval(a: np.ndarray, b: np.ndarray, n: int = BOOTSTRAP, seed: int = BOOTSTRAP_SEED,
                      level: float = LEVEL) -> tuple[float, float]:
    """Percentile interval of mean(a) - mean(b), each resampled on its own."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    da = a[rng.integers(0, len(a), size=(n, len(a)))].mean(axis=1)
    db = b[rng.integers(0, len(b), size=(n, len(b)))].mean(axis=1)
    lo, hi = np.quantile(da - db, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def verdict(lo: float, hi: float, metric: str, test: str = "better", margin: float = 0.0) -> str:
    """holds / contradicted / inconclusive from the interval [lo, hi] of d = a - b
    (module docstring)."""
    if any(math.isnan(x) for x in (lo, hi)):
        return "inconclusive"
    wlo, whi = (-hi, -lo) if HIGHER_BETTER[metric] else (lo, hi)
    m = 0.0 if test == "better" else float(margin)
    if test not in ("better", "no_worse"):
        raise ValueError(f"claims: test must be 'better' or 'no_worse', got {test!r}")
    if whi < m:
        return "holds"
    if wlo > m:
        return "contradicted"
    return "inconclusive"


def per_image(results: str | Path, dataset: str, variant: str) -> pd.DataFrame:
    """Per-image metrics of every seed of a cell (``runs/<ds>/<variant>/seed*/metrics.csv``)."""
    frames = []
    for p in sorted(Path(results).glob(f"runs/{dataset}/{variant}/seed*/metrics.csv")):
        try:
            df = pd.read_csv(p)
        except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError):
            continue
        df["seed"] = int(p.parent.name.removeprefix("seed"))
        frames.append(df)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _timing_runs(timing: pd.DataFrame, variant: str) -> np.ndarray:
    if timing is None or timing.empty:
        return np.array([])
    rows = timing[timing["variant"] == variant]
    vals: list[float] = []
    for r in rows.itertuples(index=False):
        try:
            vals += [float(x) for x in json.loads(str(r.seconds_runs))]
        except (ValueError, TypeError, AttributeError):
            if not pd.isna(r.seconds_per_image):
                vals.append(float(r.seconds_per_image))
    return np.array(vals)


def test_claims(results: str | Path, claims: list[dict], ctx, timing: pd.DataFrame | None = None,
                conv: dict | None = None) -> pd.DataFrame:
    """One row per expanded claim: measured difference, interval, n, verdict, note."""
    conv = conv or {}
    rows = []
    for c in expand(claims):
        ds = ctx.dataset(c["dataset"]) if c.get("dataset") else ""
        a, b, m = c["a"], c["b"], c["metric"]
        test, margin = c.get("test", "better"), float(c.get("margin", 0.0))
        row = {"id": c["id"], "claim": c.get("text", ""), "paper": c.get("paper", ""), "dataset": ds,
               "a": ctx.label(a), "b": ctx.label(b), "metric": m, "test": test, "margin": margin,
               "a_mean": math.nan, "b_mean": math.nan, "diff": math.nan, "lo": math.nan, "hi": math.nan,
               "n": 0, "interval": "", "verdict": "inconclusive", "note": ""}
        notes = []
        if c.get("kind", "quality") == "speed":
            ta, tb = _timing_runs(timing, a), _timing_runs(timing, b)
            if min(len(ta), len(tb)) and min(len(ta), len(tb)) < MIN_REPEATS:
                row.update(a_mean=float(ta.mean()), b_mean=float(tb.mean()), diff=float(ta.mean() - tb.mean()),
                           n=min(len(ta), len(tb)))
                notes.append(f"too few timing repeats for an interval (< {MIN_REPEATS})")
            elif len(ta) and len(tb):
                lo, hi = unpaired_interval(ta, tb)
                row.update(a_mean=float(ta.mean()), b_mean=float(tb.mean()), diff=float(ta.mean() - tb.mean()),
                           lo=lo, hi=hi, n=min(len(ta), len(tb)),
                           interval=f"bootstrap over timing repeats ({len(ta)} vs {len(tb)})")
                row["verdict"] = verdict(lo, hi, "seconds", test, margin)
            else:
                v = a if not len(ta) else b
                why = getattr(ctx, "failed", {}).get((ds, v))
                notes.append(f"no timing for {v}" + (f" (not computed: {why})" if why else ""))
        elif any((ds, v) in getattr(ctx, "failed", {}) for v in (a, b)):
            # a cell with seeds that have no result: fewer pairs would no longer be the paired design
            notes += [f"{ctx.label(v)} not computed: {ctx.failed[ds, v]}" for v in (a, b) if (ds, v) in ctx.failed]
        else:
            da, db = per_image(results, ds, a), per_image(results, ds, b)
            if da.empty or db.empty or m not in da or m not in db:
                notes.append(f"no result for {a if da.empty or m not in da else b} on {ds}")
            else:
                pair = da[["seed", "image", m]].merge(db[["seed", "image", m]], on=["seed", "image"],
                                                      suffixes=("_a", "_b")).dropna()
                if pair.empty:
                    notes.append("no (image, seed) pair in common")
                else:
                    d = (pair[f"{m}_a"] - pair[f"{m}_b"]).to_numpy()
                    n_img, n_seed = pair["image"].nunique(), pair["seed"].nunique()
                    row.update(a_mean=float(pair[f"{m}_a"].mean()), b_mean=float(pair[f"{m}_b"].mean()),
                               diff=float(d.mean()), n=len(d))
                    if len(d) < MIN_PAIRS:
                        notes.append(f"{len(d)} pairs ({n_img} images x {n_seed} seeds): too few for an interval "
                                     f"(< {MIN_PAIRS})")
                    else:
                        lo, hi = bootstrap_interval(d)
                        row.update(lo=lo, hi=hi, interval=f"paired bootstrap over {n_img} images x {n_seed} seeds")
                        row["verdict"] = verdict(lo, hi, m, test, margin)
            for v in (a, b):
                info = conv.get((ds, v)) or {}
                if info.get("converged") is False:
                    notes.append(f"{ctx.label(v)} not converged: {info['text']}")
        row["note"] = "; ".join(notes)
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- table

def claims_table(df: pd.DataFrame, ctx):
    """The claims as a :class:`ecdp.report.tables.Table` (CSV / LaTeX / Markdown)."""
    from .tables import Table, _caption

    rows = df.to_dict("records") if df is not None and not df.empty else []
    digits = {"lpips": 3, "psnr": 2, "ssim": 3, "seconds": 2}

    def num(key):
        return lambda r: "" if pd.isna(r.get(key)) else f"{r[key]:.{digits.get(r['metric'], 3)}f}"

    def interval(r):
        if pd.isna(r.get("lo")):
            return ""
        d = digits.get(r["metric"], 3)
        return f"[{r['lo']:.{d}f}, {r['hi']:.{d}f}]"

    columns = ["id", "paper", "claim", "dataset", "a", "b", "metric", "test", "margin", "a_mean", "b_mean", "diff",
               "lo", "hi", "n", "interval", "verdict", "note"]
    display = [("Claim", "claim"), ("Paper", "paper"), ("Dataset", "dataset"), ("A", "a"), ("B", "b"),
               ("Metric", "metric"), ("A mean", "a_mean"), ("B mean", "b_mean"), ("A - B", "diff"), ("95 % interval", "ci"),
               ("n", "n"), ("Verdict", "verdict"), ("Note", "note")]
    formats = {"a_mean": num("a_mean"), "b_mean": num("b_mean"), "diff": num("diff"), "ci": interval,
               "n": lambda r: str(int(r["n"])) if r.get("n") else "",
               "metric": lambda r: r["metric"] + (f" (no worse, margin {r['margin']:g})" if r["test"] == "no_worse" else ""),
               "claim": lambda r: r["claim"]}
    counts = pd.Series([r["verdict"] for r in rows]).value_counts().to_dict() if rows else {}
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in ("holds", "contradicted", "inconclusive"))
    extra = (f" {summary}. a - b over (image, seed) pairs of the same test images and seeds; 95 % interval: "
             f"percentile bootstrap ({BOOTSTRAP} resamples, seed {BOOTSTRAP_SEED}) over the pairs (timing: over "
             "each method's repeats). Verdict from the interval: holds if it lies on the claimed side of 0 (of the "
             "margin for 'no worse'), contradicted if on the other side, else inconclusive (ecdp/report/claims.py).")
    cap = _caption("The paper's claims tested on this grid", ctx, None, "", extra)
    return Table("claims", cap, columns, rows, display, [list(range(len(rows)))] if rows else [], {}, formats)
