"""The rehearsal's datasets at their source (issue 13): the small archives with the
official names and inner layouts (ecdp.data.fixtures: DIV2K, Flickr2K, CelebA,
ILSVRC2012, the EDSR benchmark archive) written into FOLDER, and the sources file that
points the real registry entries at them: ``base_url: file:///FOLDER/`` and, per file,
size and sha256 / md5, so that the real ``ecdp data prepare`` reads them like a local
mirror, every file checksum-verified.

    python3 workflow/scripts/fixture_archives.py FOLDER SOURCES

The workflow's rule ``fixture_archives`` runs it (only where the config sets
``fixture_archives: FOLDER``, as config/rehearsal.yaml does; SOURCES is the config's
``data_sources``), and every ``prepare_dataset`` job waits for SOURCES.  ILSVRC2012's
tarballs are user files: ``prepare_args: --source-dir FOLDER`` reads them from there.
The archives are deterministic (fixed timestamps), so are their checksums.
"""
# no `from __future__` import and no use of __doc__: Snakemake's `script:` puts its preamble above this file

import argparse
import contextlib
import sys
from pathlib import Path

#: the checkout, when run from it (under Snakemake this file is a copy in .snakemake/scripts
#: and the workflow's PYTHONPATH names the checkout)
REPO = Path(__file__).resolve().parents[2]


def write(folder: str | Path, sources: str | Path) -> dict:
    """Build every fixture archive into ``folder`` (atomically, file by file), then write
    ``sources`` (last: a job that sees it sees the archives); returns the sources mapping."""
    if (REPO / "ecdp").is_dir() and str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    from ecdp.data import fixtures

    archives = fixtures.build_archives()
    fixtures.write_archives(folder, archives)
    mapping = fixtures.sources_for(archives, Path(folder).resolve().as_uri() + "/")
    fixtures.write_sources(sources, mapping)
    return mapping


def run(folder: str, sources: str) -> int:
    mapping = write(folder, sources)
    total = sum(f["size"] for f in mapping["files"].values())
    print(f"{len(mapping['files'])} archives ({total / 1e6:.1f} MB) in {folder}; sources: {sources} "
          f"(base_url {mapping['base_url']})")
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="The rehearsal's official-layout fixture archives and their sources file.")
    p.add_argument("folder", help="where the archives go (created)")
    p.add_argument("sources", help="the sources file to write (JSON), for `ecdp data prepare --sources`")
    args = p.parse_args(argv)
    return run(args.folder, args.sources)


if __name__ == "__main__":
    sm = globals().get("snakemake")      # set by the workflow's `script:` directive
    if sm is not None:
        with open(sm.log[0], "w") as log, contextlib.redirect_stdout(log):
            sys.exit(run(sm.params.folder, sm.output.sources))
    sys.exit(main())
