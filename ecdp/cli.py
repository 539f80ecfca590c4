"""The ``ecdp`` command.  Each subcommand lives in the module that owns the concept;
that module exposes ``add_cli(parser)`` (arguments) and ``run_cli(args)`` (returns an
exit code).  Modules are imported lazily so ``ecdp --help`` is instant.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "train": ("ecdp.training", "train a method from a config (ECDP, SR3, SRDiff, ...)"),
    "sr": ("ecdp.inference", "super-resolve your own images with a checkpoint"),
    "params": ("ecdp.registry", "parameter counts of the paper architectures beside the paper's"),
    "data": ("ecdp.data.cli", "prepare datasets (download, verify, extract, degrade)"),
    "weights": ("ecdp.weights.cli", "fetch or convert pretrained LPIPS / VGG backbone weights"),
    "metrics": ("ecdp.metrics", "PSNR, SSIM and LPIPS of two images or two folders"),
    "evaluate": ("ecdp.evaluation", "super-resolve a test set with a checkpoint and score it"),
    "time": ("ecdp.timing", "seconds per image and NFE of a method's sampler"),
    "fit-grid": ("ecdp.sampler_study", "fit a few-step sampler's time grid to a trained ECDP (issue 17)"),
    "report": ("ecdp.report.cli", "aggregate run metrics into the paper's tables and figures"),
}


class CLIError(Exception):
    """An error for the user: printed as one line, exit code 2."""


def sampler_option(text: str | None) -> dict:
    """The ``--sampler`` option of ``ecdp sr / evaluate / time``: a JSON object of sampler
    options (``{"name": "dpmpp_2m", "steps": 10}``, ``{"atol": 1e-3}``), a preset name of
    the method (``fast``: ``Method.SAMPLER_PRESETS``), or {} if absent."""
    import json

    import re

    if not text:
        return {}
    if re.fullmatch(r"[A-Za-z][\w-]*", text):   # a preset name of the checkpoint's method (``fast``)
        return {"preset": text}
    try:
        opts = json.loads(text)
    except json.JSONDecodeError as e:
        raise CLIError(f"--sampler is not valid JSON ({e})") from None
    if not isinstance(opts, dict):
        raise CLIError("--sampler must be a JSON object, e.g. '{\"name\": \"dpmpp_2m\", \"steps\": 10}'")
    return opts


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ecdp", description="ecdp-bench: reproduce, extend and time ECDP (AAAI 2024).")
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:]
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_)
        p.set_defaults(_module=module)
        # only import the module whose arguments are needed
        if name in argv[:1]:
            importlib.import_module(module).add_cli(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is not None:
        sys.argv = [sys.argv[0]] + list(argv)
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:])
    try:
        return int(importlib.import_module(args._module).run_cli(args) or 0)
    except CLIError as e:
        print(f"ecdp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ecdp {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # `python -m ecdp.cli`: use the package's module so CLIError matches
    from ecdp.cli import main as _main

    sys.exit(_main())
