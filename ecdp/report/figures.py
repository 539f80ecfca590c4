"""Seaborn figures of a results folder (PNG, headless Agg backend).

* ``figure8.png``: LPIPS on validation patches during training for the eps, x0 and
  hybrid parametrizations (paper Figure 8), from the trainer's ``val.jsonl``;
* ``lpips_vs_seconds.png``: LPIPS against seconds per image, every evaluated cell,
  one panel per dataset;
* ``lpips_vs_nfe.png``: LPIPS against NFE per sampler of one model (sampler study);
* ``grid_<dataset>.png``: visual comparison grids like the paper's Figure 4:
  LR (nearest) | each method | HR, on the centre crops ``ecdp evaluate`` saves.

Each function returns the path it wrote, or ``None`` (with nothing written) when its
data is absent, so a partial results folder still gets every figure it can have.
"""
from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from .claims import read_jsonl

# Which variants a figure shows and under which label comes from the workflow config
# (the figure8 study, the variants of Tables 1, 2, 4, each variant's ``label``).


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    from ..checkpoint import atomic_open

    try:
        with atomic_open(path, "wb") as f:
            fig.savefig(f, format="png", dpi=120, bbox_inches="tight")
    finally:
        _plt().close(fig)
    return path


def _subtitle(profile_label: str) -> str:
    return f"profile: {profile_label}" if profile_label else ""


# --------------------------------------------------------------------------- Figure 8

def read_validation(results: str | Path, dataset: str, variants: dict[str, str]) -> pd.DataFrame:
    """``val.jsonl`` of each variant (name -> label) on ``dataset``, one row per record."""
    rows = []
    for variant, label in variants.items():
        for p in sorted(Path(results).glob(f"runs/{dataset}/{variant}/seed*/train/val.jsonl")):
            seed = p.parent.parent.name.removeprefix("seed")
            rows += [{"parametrization": label, "variant": variant, "seed": seed, **r} for r in read_jsonl(p)]
    return pd.DataFrame(rows)


def figure8(results: str | Path, out: str | Path, dataset: str, variants: dict[str, str],
            profile_label: str = "") -> Path | None:
    """``variants``: name -> label, in legend order (the config's figure8 study)."""
    import seaborn as sns

    df = read_validation(results, dataset, variants)
    if df.empty or "lpips" not in df:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    sns.lineplot(data=df, x="step", y="lpips", hue="parametrization", errorbar="sd", marker="o", ax=ax,
                 hue_order=[v for v in variants.values() if v in set(df["parametrization"])])
    ax.set_xlabel("training step")
    ax.set_ylabel("LPIPS on validation patches ↓")
    ax.set_title(f"Figure 8: LPIPS during training ({dataset})\n{_subtitle(profile_label)}", fontsize=9)
    return _save(fig, Path(out))


# --------------------------------------------------------------------------- cost vs quality

def lpips_vs_seconds(runs: pd.DataFrame, out: str | Path, profile_label: str = "") -> Path | None:
    import seaborn as sns

    if runs is None or runs.empty or "seconds_per_image" not in runs:
        return None
    df = runs.dropna(subset=["lpips", "seconds_per_image"])
    if df.empty:
        return None
    g = sns.relplot(data=df, x="seconds_per_image", y="lpips", hue="variant", style="method", col="dataset",
                    kind="scatter", s=70, height=3.6, aspect=1.1, facet_kws={"sharex": False, "sharey": False})
    from matplotlib.ticker import NullFormatter

    for ax in g.axes.flat:
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("seconds per image (log)")
        ax.set_ylabel("LPIPS ↓")
    g.figure.suptitle(f"LPIPS vs seconds per image, every evaluated run\n{_subtitle(profile_label)}",
                      fontsize=9, y=1.06)
    return _save(g.figure, Path(out))


def lpips_vs_nfe(samplers: pd.DataFrame, out: str | Path, title: str = "", profile_label: str = "") -> Path | None:
    """LPIPS against NFE per sampler family; with the study's ``solver_rmse`` a second
    panel plots the solver error (RMSE to the ODE's solution, log-log: the slopes are the
    solvers' orders)."""
    import seaborn as sns

    if samplers is None or samplers.empty or "nfe" not in samplers:
        return None
    df = samplers.copy()
    if "family" not in df:  # a study written before it recorded the family: the label without steps / tolerance
        df["family"] = (df["sampler"].astype(str).str.replace(r"-tol[-+.0-9e]+$", "", regex=True)
                        .str.replace(r"-\d+(?=-|$)", "", regex=True))
    # a stochastic sampler solves another equation: its distance to the ODE's solution is no solver error
    stochastic = df["family"].astype(str).str.startswith(("reverse", "ddpm"))
    errors = (df[(df["solver_rmse"] > 0) & ~stochastic]
              if "solver_rmse" in df else df.iloc[:0])
    plt = _plt()
    fig, axes = plt.subplots(1, 2 if len(errors) else 1, figsize=(10.5 if len(errors) else 5.5, 3.8), squeeze=False)
    from matplotlib.ticker import NullFormatter

    panels = [("lpips", df, "LPIPS ↓", False)]
    if len(errors):
        panels.append(("solver_rmse", errors, "solver error (RMSE, 8-bit levels)", True))
    for ax, (y, data, label, logy) in zip(axes[0], panels):
        sns.lineplot(data=data.sort_values("nfe"), x="nfe", y=y, hue="family", marker="o", ax=ax, errorbar=None,
                     hue_order=sorted(df["family"].unique()), legend=ax is axes[0][-1])
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        if logy:
            ax.set_yscale("log")
        ax.set_xlabel("NFE (network evaluations per image, log)")
        ax.set_ylabel(label)
    if len(errors):
        axes[0][-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    what = "LPIPS and solver error (RMSE to the ODE's solution)" if len(errors) else "LPIPS"
    fig.suptitle(f"{what} vs NFE per sampler {title}\n{_subtitle(profile_label)}", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return _save(fig, Path(out))


# --------------------------------------------------------------------------- visual grids

def visual_grid(results: str | Path, out: str | Path, dataset: str, variants: dict[str, str] | None = None,
                seed: int | None = None, max_images: int = 3, profile_label: str = "") -> Path | None:
    """LR | each method | HR on the saved centre crops of the first images; ``variants``:
    name -> label in column order (default: every variant with crops on ``dataset``)."""
    from PIL import Image

    results = Path(results)
    if variants is None:
        variants = {p.name: p.name for p in sorted(results.glob(f"runs/{dataset}/*")) if p.is_dir()}
    labels = variants
    crops: dict[str, Path] = {}
    for v in variants:
        seeds = sorted(results.glob(f"runs/{dataset}/{v}/seed*/crops"))
        if seed is not None:
            seeds = [p for p in seeds if p.parent.name == f"seed{seed}"]
        if seeds:
            crops[v] = seeds[0]
    if not crops:
        return None
    ref = next(iter(crops.values()))
    stems = sorted(p.name.removesuffix("_hr.png") for p in ref.glob("*_hr.png"))[:max_images]
    if not stems:
        return None
    cols = ["LR"] + [labels.get(v, v) for v in crops] + ["HR"]
    plt = _plt()
    fig, axes = plt.subplots(len(stems), len(cols), figsize=(2.0 * len(cols), 2.0 * len(stems) + 0.4), squeeze=False)
    for r, stem in enumerate(stems):
        tiles = [ref / f"{stem}_lr.png"] + [crops[v] / f"{stem}_sr.png" for v in crops] + [ref / f"{stem}_hr.png"]
        for c, path in enumerate(tiles):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if path.exists():
                with Image.open(path) as im:
                    ax.imshow(im.convert("RGB"), interpolation="nearest")
            else:
                ax.text(0.5, 0.5, "not run", ha="center", va="center", fontsize=8)
            if r == 0:
                ax.set_title(cols[c], fontsize=9)
        axes[r][0].set_ylabel(stem, fontsize=8)
    fig.suptitle(f"Visual comparison on {dataset} (centre crops)\n{_subtitle(profile_label)}", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(out))


def make_figures(results: str | Path, runs: pd.DataFrame, out_dir: str | Path, *, fig8_dataset: str | None,
                 grid_datasets: dict[str, dict | None], samplers: list[tuple[str, pd.DataFrame]] = (),
                 profile_label: str = "", fig8_variants: dict[str, str] | None = None) -> list[Path]:
    """Every figure this results folder has data for; returns the files written.
    ``grid_datasets``: dataset -> its variants (name -> label; ``None``: all found)."""
    out_dir = Path(out_dir)
    written = []
    if fig8_dataset and fig8_variants:
        written.append(figure8(results, out_dir / "figure8.png", fig8_dataset, fig8_variants, profile_label))
    written.append(lpips_vs_seconds(runs, out_dir / "lpips_vs_seconds.png", profile_label))
    for name, df in samplers:
        written.append(lpips_vs_nfe(df, out_dir / ("lpips_vs_nfe.png" if len(samplers) == 1 else f"lpips_vs_nfe_{name}.png"),
                                    f"({name})", profile_label))
    for ds, variants in grid_datasets.items():
        written.append(visual_grid(results, out_dir / f"grid_{ds}.png", ds, variants, profile_label=profile_label))
    return [p for p in written if p is not None and not (isinstance(p, float) and math.isnan(p))]


# --------------------------------------------------------------------------- training curves

def training_curves(results: str | Path, out: str | Path, dataset: str, variants: dict[str, str],
                    profile_label: str = "") -> Path | None:
    """Validation LPIPS against training step of every variant (name -> label) with a
    ``val.jsonl`` on ``dataset``: mean over seeds, band = s.d."""
    import seaborn as sns

    df = read_validation(results, dataset, variants)
    if df.empty or "lpips" not in df:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 4.2))
    order = [v for v in variants.values() if v in set(df["parametrization"])]
    sns.lineplot(data=df, x="step", y="lpips", hue="parametrization", errorbar="sd", marker="o", markersize=3,
                 ax=ax, hue_order=order)
    ax.set_xlabel("training step (all stages)")
    ax.set_ylabel("validation LPIPS (EMA weights) ↓")
    ax.legend(fontsize=7, title=None, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"Training curves ({dataset}), n = {df['seed'].nunique()} seed(s)\n{_subtitle(profile_label)}",
                 fontsize=9)
    return _save(fig, Path(out))


# --------------------------------------------------------------------------- claims

def claims_forest(claims: pd.DataFrame, out: str | Path, profile_label: str = "") -> Path | None:
    """Each claim's difference A - B with its 95 % interval against zero, one panel per
    metric (units differ), coloured by verdict."""
    if claims is None or claims.empty or claims["diff"].isna().all():
        return None
    df = claims[claims["diff"].notna()]
    metrics = list(dict.fromkeys(df["metric"]))
    plt = _plt()
    heights = [max(1, (df["metric"] == m).sum()) for m in metrics]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(8, 0.28 * sum(heights) + 1.2 * len(metrics)),
                             gridspec_kw={"height_ratios": heights}, squeeze=False)
    colours = {"holds": "tab:green", "contradicted": "tab:red", "inconclusive": "tab:gray"}
    for ax, m in zip(axes[:, 0], metrics):
        g = df[df["metric"] == m].reset_index(drop=True)
        y = range(len(g))[::-1]
        for yi, r in zip(y, g.itertuples(index=False)):
            c = colours.get(r.verdict, "k")
            ax.errorbar(r.diff, yi, xerr=[[r.diff - r.lo], [r.hi - r.diff]], fmt="o", color=c, capsize=2, ms=4)
        ax.axvline(0, color="k", lw=0.8)
        for r in g.itertuples(index=False):
            if r.test == "no_worse" and r.margin:
                ax.axvline(r.margin if m in ("lpips", "seconds") else -r.margin, color="k", lw=0.6, ls=":")
                break
        ax.set_yticks(list(y))
        ax.set_yticklabels([f"{r.a} vs {r.b} ({r.dataset})" for r in g.itertuples(index=False)], fontsize=7)
        better = "higher is better for A" if m in ("psnr", "ssim") else "lower is better for A"
        ax.set_xlabel(f"A - B in {m} ({better}); green holds, red contradicted, grey inconclusive", fontsize=7)
    fig.suptitle(f"The paper's claims: A - B with 95 % intervals\n{_subtitle(profile_label)}", fontsize=9)
    fig.tight_layout()
    return _save(fig, Path(out))
