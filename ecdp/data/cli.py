"""``ecdp data``: ``list`` the registry, ``prepare`` datasets (download, verify,
extract, degrade, estimate sigma^2), ``verify`` a prepared dataset's files (sha256
against its ``files.json``; every use checks names and sizes).

``prepare --sources FILE`` (or the environment variable ``ECDP_DATA_SOURCES``; the
option wins) fetches the registry's files from another URL base with other checksums,
e.g. a mirror or the local archives of :mod:`ecdp.data.fixtures`; the file's format is
in :mod:`ecdp.data.registry` (:func:`~ecdp.data.registry.with_sources`)."""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
import time

from .registry import (ALIASES, REGISTRY, SOURCES_ENV, SourcesError, get_spec, load_sources, resolve_names,
                       with_sources)


def add_cli(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", required=True)
    p = sub.add_parser("prepare", help="download, verify and prepare datasets into ROOT/NAME",
                       description="Prepare datasets into ROOT/NAME/{train,test}/{HR,LR} with meta.json. "
                                   "NAME may be 'embedded' (the three offline sets) or 'benchmarks'.")
    p.add_argument("names", nargs="+", metavar="NAME", help=f"dataset(s): {', '.join(list(REGISTRY) + list(ALIASES))}")
    p.add_argument("--root", required=True, help="folder holding prepared datasets")
    p.add_argument("--dry-run", action="store_true", help="print every URL, size and checksum; touch nothing")
    p.add_argument("--source-dir", help="folder with user-supplied files (ImageNet ILSVRC2012 tarballs)")
    p.add_argument("--sources", metavar="FILE",
                   help="YAML/JSON override of the registry's sources: {base_url: URL, files: {FILENAME: "
                        "{size, sha256, md5}}} (a mirror, or local test archives); checksums are still verified. "
                        f"Default: ${SOURCES_ENV} if set, else the official hosts")
    p.add_argument("--download-dir", help="where archives go (default ROOT/_downloads)")
    p.add_argument("--limit", type=int, help="at most N images per split (smoke runs)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a dataset option, e.g. test_limit=1000 (VALUE parsed as JSON when possible)")
    p.add_argument("--workers", type=int, default=1, help="processes for image conversion")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--force", action="store_true",
                   help="rebuild a prepared dataset (e.g. one `ecdp data verify` found damaged)")
    v = sub.add_parser("verify", help="check a prepared dataset's files against its files.json (size and sha256)")
    v.add_argument("names", nargs="+", metavar="NAME", help="prepared dataset folder name(s) under --root")
    v.add_argument("--root", required=True, help="folder holding prepared datasets")
    sub.add_parser("list", help="the dataset registry")


def _parse_sets(items: list[str]) -> dict:
    from ..cli import CLIError
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise CLIError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


def _sources(path: str | None) -> dict | None:
    """The checked sources override of ``--sources`` or $ECDP_DATA_SOURCES, or None."""
    from ..cli import CLIError
    path = path or os.environ.get(SOURCES_ENV) or None
    if path is None:
        return None
    try:
        return load_sources(path)
    except SourcesError as e:
        raise CLIError(str(e)) from None


def _list() -> int:
    width = max(map(len, REGISTRY))
    for name, spec in REGISTRY.items():
        if spec.user_files:
            need = "user files: " + ", ".join(f.filename for f in spec.user_files.values())
        elif spec.files:
            need = "downloads: " + ", ".join(f.filename for f in spec.files.values())
        else:
            need = "offline (pip wheels)"
        print(f"{name:<{width}}  x{spec.scale}  {'/'.join(spec.splits):<10}  {spec.summary}")
        print(f"{'':<{width}}            {need}")
    print("aliases: " + "; ".join(f"{a} = {' '.join(n)}" for a, n in ALIASES.items()))
    return 0


def run_cli(args) -> int:
    from ..cli import CLIError
    from .download import DownloadError
    from .extract import UnsafeArchiveError
    from .prepare import PrepareError, is_prepared, plan, prepare

    from .paired import DatasetDamaged, check_files

    if args.data_command == "list":
        return _list()
    if args.data_command == "verify":
        bad = 0
        for name in args.names:
            folder = Path(args.root) / name
            if not is_prepared(args.root, name):
                raise CLIError(f"{folder} is not a prepared dataset (no .complete marker)")
            try:
                n = check_files(folder, full=True)
            except DatasetDamaged as e:
                print(f"{name}: {e}")
                bad += 1
                continue
            print(f"{name}: ok, {n} files match files.json (sha256)" if (folder / "files.json").exists()
                  else f"{name}: ok, image counts match meta.json (prepared before files.json: no sha256 to check)")
        return 1 if bad else 0
    try:
        names = resolve_names(args.names)
    except KeyError as e:
        raise CLIError(e.args[0]) from None
    options = _parse_sets(args.set)
    sources = _sources(args.sources)
    if args.dry_run:
        for name in names:
            print("\n".join(plan(with_sources(get_spec(name), sources), args.root, args.source_dir,
                                 args.download_dir)))
        return 0
    for name in names:
        if is_prepared(args.root, name) and not args.force:
            try:
                check_files(Path(args.root) / name)
            except DatasetDamaged as e:
                raise CLIError(str(e)) from None
            had = json.loads((Path(args.root) / name / "meta.json").read_text()).get("options") or {}
            differ = {k: v for k, v in options.items() if k in had and had[k] != v}
            if differ:
                raise CLIError(f"{name}: already prepared in {args.root}/{name} with "
                               f"{', '.join(f'{k}={json.dumps(had[k])}' for k in differ)}; --force rebuilds it with "
                               f"{', '.join(f'{k}={json.dumps(v)}' for k, v in differ.items())}")
            print(f"{name}: already prepared in {args.root}/{name}")
            continue
        spec_opts = {k: v for k, v in options.items() if k in get_spec(name).options}
        if len(names) == 1 and set(options) - set(spec_opts):
            raise CLIError(f"{name}: unknown option(s) {sorted(set(options) - set(spec_opts))}; "
                           f"known: {sorted(get_spec(name).options)}")
        t0 = time.perf_counter()
        try:
            out = prepare(with_sources(get_spec(name), sources), args.root, source_dir=args.source_dir,
                          download_dir=args.download_dir, limit=args.limit, options=spec_opts,
                          workers=args.workers, progress=not args.no_progress, force=args.force)
        except (DownloadError, UnsafeArchiveError, PrepareError, FileNotFoundError, DatasetDamaged) as e:
            msg = str(e)
            raise CLIError(msg if msg.startswith(f"{name}:") else f"{name}: {msg}") from None
        meta = json.loads((out / "meta.json").read_text())
        sig = meta["sigma2"]
        print(f"{name}: {out} train {meta['counts']['train']} / test {meta['counts']['test']}, "
              f"sigma2 {'-' if sig is None else f'{sig:.6f}'} ({time.perf_counter() - t0:.1f}s)")
    return 0
