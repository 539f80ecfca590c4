"""Safe extraction of zip and tar(.gz/.bz2/.xz) archives.

Every entry is validated BEFORE anything is written: absolute paths, ``..``
components, drive letters, symlinks, hardlinks, device files and FIFOs are
refused with an :class:`UnsafeArchiveError` naming the entry.  Regular files and
folders are then copied out by hand (no ``extractall``, no metadata applied) into
``DEST.tmp-extract`` next to the destination; a marker file is written last and
the folder renamed to ``DEST``.  A second call finds the marker and does nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

from ..progress import bar as tqdm

from .download import file_lock

__all__ = ["extract", "safe_member_path", "UnsafeArchiveError", "MARKER"]

MARKER = ".extracted"


class UnsafeArchiveError(ValueError):
    """An archive entry that would escape the target folder or is not a plain file."""


def safe_member_path(name: str) -> PurePosixPath | None:
    """The relative path of an archive entry, or raise :class:`UnsafeArchiveError`.

    Returns None for entries that name the archive root itself (``./``)."""
    if "\x00" in name:
        raise UnsafeArchiveError(f"unsafe archive entry {name!r}: NUL byte in name")
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        raise UnsafeArchiveError(f"unsafe archive entry {name!r}: absolute path")
    parts = [p for p in norm.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError(f"unsafe archive entry {name!r}: '..' component")
    return PurePosixPath(*parts) if parts else None


def _zip_entries(zf: zipfile.ZipFile):
    """[(relpath, is_dir, ZipInfo)] after validation."""
    out = []
    for info in zf.infolist():
        mode = (info.external_attr >> 16) & 0xFFFF
        kind = stat.S_IFMT(mode)
        if kind and kind not in (stat.S_IFREG, stat.S_IFDIR):
            what = "symlink" if kind == stat.S_IFLNK else "special file"
            raise UnsafeArchiveError(f"unsafe archive entry {info.filename!r}: {what}")
        rel = safe_member_path(info.filename)
        if rel is not None:
            out.append((rel, info.is_dir(), info))
    return out


def _tar_entries(tf: tarfile.TarFile):
    out = []
    for m in tf.getmembers():
        if m.issym() or m.islnk():
            kind = "symlink" if m.issym() else "hardlink"
            raise UnsafeArchiveError(f"unsafe archive entry {m.name!r}: {kind} to {m.linkname!r}")
        if not (m.isfile() or m.isdir()):
            raise UnsafeArchiveError(f"unsafe archive entry {m.name!r}: device, FIFO or other special file")
        rel = safe_member_path(m.name)
        if rel is not None:
            out.append((rel, m.isdir(), m))
    return out


def _check_inside(root: Path, rel: PurePosixPath, name) -> Path:
    target = (root / rel).resolve()
    if os.path.commonpath([str(root.resolve()), str(target)]) != str(root.resolve()):
        raise UnsafeArchiveError(f"unsafe archive entry {name!r}: resolves outside the target folder")
    return root / rel


def _write_entries(root: Path, entries, open_member, progress: bool, desc: str) -> int:
    n = 0
    for rel, is_dir, member in tqdm(entries, desc=desc, unit="file", disable=not progress, leave=False):
        path = _check_inside(root, rel, getattr(member, "filename", getattr(member, "name", rel)))
        if is_dir:
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with open_member(member) as src, open(path, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        n += 1
    return n


def extract(archive: str | os.PathLike, dest: str | os.PathLike, progress: bool = True) -> Path:
    """Extract ``archive`` into the folder ``dest`` (which this function owns).

    No-op when ``dest/.extracted`` exists.  Raises :class:`UnsafeArchiveError` (and
    writes nothing) if any entry is unsafe, ``ValueError`` for an unknown format."""
    archive, dest = Path(archive), Path(dest)
    if (dest / MARKER).exists():
        return dest
    if zipfile.is_zipfile(archive):
        arc, list_entries = zipfile.ZipFile(archive), _zip_entries
        open_member = arc.open
    elif tarfile.is_tarfile(archive):
        arc, list_entries = tarfile.open(archive, "r:*"), _tar_entries
        open_member = arc.extractfile
    else:
        raise ValueError(f"{archive}: not a zip or tar archive")
    with arc:
        entries = list_entries(arc)                  # validates every entry before anything is written
        with file_lock(dest.parent / f".{dest.name}.lock"):
            if (dest / MARKER).exists():
                return dest
            tmp = dest.with_name(dest.name + ".tmp-extract")
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            try:
                n = _write_entries(tmp, entries, open_member, progress, f"extract {archive.name}")
                (tmp / MARKER).write_text(json.dumps({"archive": archive.name, "files": n}) + "\n")
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            if dest.exists():                        # a folder without marker: stale, ours to replace
                shutil.rmtree(dest)
            os.replace(tmp, dest)
    return dest
