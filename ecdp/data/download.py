"""Resumable, checksummed downloads with the standard library only (urllib).

:func:`download` fetches ``url`` into ``dest.part`` and renames it to ``dest`` only
after its size and checksum verified, so a file under its final name is always
complete and correct.  An interrupted transfer continues where the partial file
left off (HTTP ``Range``); a server that ignores ``Range`` (answers 200) restarts
from byte 0.  Connection errors are retried with exponential back-off.  A file
whose checksum is wrong is deleted and :class:`ChecksumError` raised.

A ``file://`` URL (a local mirror of the archives, or the rehearsal's fixture archives)
goes the same way: hard-linked (or copied) to ``dest.part``, verified, renamed; a
missing source is a one-line :class:`DownloadError` at once (nothing to retry).

Google Drive (CelebA's official host) needs an id-based URL and, for large files,
a "can't scan for viruses" confirm page: :func:`gdrive_url` and
:func:`confirm_url_from_page` handle both (best effort: Google changes this page
from time to time).
"""
from __future__ import annotations

import contextlib
import hashlib
import html
import http.client
import os
import re
import socket
import stat
import time
import urllib.error
import urllib.parse
import urllib.request
from http.cookiejar import CookieJar
from pathlib import Path

from ..progress import bar as tqdm

__all__ = ["download", "local_path", "verify_file", "file_digest", "gdrive_url", "confirm_url_from_page",
           "DownloadError", "ChecksumError", "file_lock"]

CHUNK = 1 << 20
USER_AGENT = "ecdp-bench/0.1 (+https://github.com/; urllib)"


class DownloadError(RuntimeError):
    """A download that could not be completed (after retries)."""


class ChecksumError(DownloadError):
    """A file whose size or checksum is not the expected one."""


# ---------------------------------------------------------------- verification
def file_digest(path: str | os.PathLike, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: str | os.PathLike, sha256: str | None = None, md5: str | None = None,
                size: int | None = None) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the given size / digests."""
    path = Path(path)
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise ChecksumError(f"{path.name}: size {actual} bytes, expected {size}")
    for algo, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            got = file_digest(path, algo)
            if got.lower() != expected.lower():
                raise ChecksumError(f"{path.name}: {algo} {got}, expected {expected}")


@contextlib.contextmanager
def file_lock(path: str | os.PathLike):
    """Exclusive advisory lock on ``path`` (created) so that two processes (e.g. two
    Snakemake jobs preparing Set5 and Set14 from the same archive) do not write the
    same partial file.  No-op where ``fcntl`` is unavailable."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


# ---------------------------------------------------------------- Google Drive
def gdrive_url(file_id: str) -> str:
    """The direct-download URL of a Google Drive file id."""
    return "https://drive.google.com/uc?" + urllib.parse.urlencode({"export": "download", "id": file_id})


def confirm_url_from_page(page: str, url: str) -> str | None:
    """The URL that confirms a Google Drive "file too large to scan" page, or None.

    Handles the current form (``<form action=".../download"> <input type="hidden"
    name=... value=...>``) and the older ``confirm=TOKEN`` link."""
    form = re.search(r'<form[^>]*action="([^"]+)"[^>]*>(.*?)</form>', page, re.S | re.I)
    if form:
        action = html.unescape(form.group(1))
        fields = dict(re.findall(r'<input[^>]*type="hidden"[^>]*name="([^"]+)"[^>]*value="([^"]*)"', form.group(2)))
        if fields:
            return urllib.parse.urljoin(url, action) + "?" + urllib.parse.urlencode(
                {k: html.unescape(v) for k, v in fields.items()})
    token = re.search(r"confirm=([0-9A-Za-z_\-]+)", page)
    if token:
        sep = "&" if "?" in url else "?"
        return f"{url}{sep}confirm={token.group(1)}"
    return None


def _is_gdrive(url: str) -> bool:
    host = urllib.parse.urlparse(url).netloc
    return host.endswith("drive.google.com") or host.endswith("drive.usercontent.google.com")


# ---------------------------------------------------------------- transfer
_RETRYABLE = (urllib.error.URLError, ConnectionError, socket.timeout, TimeoutError,
              http.client.IncompleteRead, http.client.RemoteDisconnected, http.client.BadStatusLine)


class _Incomplete(ConnectionError):
    pass


def _open(opener, url: str, offset: int, timeout: float):
    req = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    return opener.open(req, timeout=timeout)


def _transfer_once(opener, url: str, part: Path, size: int | None, timeout: float,
                   progress: bool, desc: str) -> str:
    """One request; appends to ``part``.  Returns the URL to use next (Google Drive
    confirm pages redirect), raises on connection errors / short reads."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        part.unlink()
        offset = 0
    if size is not None and offset == size:
        return url
    try:
        resp = _open(opener, url, offset, timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:          # range not satisfiable: the partial is bogus or complete
            if size is None:
                return url                     # assume complete; the checksum decides
            part.unlink()
            raise _Incomplete(f"HTTP 416 for bytes={offset}-; restarting") from None
        if 500 <= e.code < 600 or e.code == 429:
            raise _Incomplete(f"HTTP {e.code}") from None
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}") from None
    with resp:
        status = getattr(resp, "status", None) or 200
        ctype = resp.headers.get("Content-Type", "")
        if _is_gdrive(url) and ctype.startswith("text/html"):
            page = resp.read(4 << 20).decode("utf-8", "replace")
            confirmed = confirm_url_from_page(page, url)
            if confirmed is None or confirmed == url:
                raise DownloadError(f"{url}: Google Drive returned a web page, not the file "
                                    "(quota exceeded or the page changed); download it by hand "
                                    "into the downloads folder")
            return confirmed
        if status == 206:
            m = re.match(r"bytes (\d+)-", resp.headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                part.unlink(missing_ok=True)
                raise _Incomplete(f"bad Content-Range {resp.headers.get('Content-Range')!r}; restarting")
            mode = "ab"
        else:                                  # 200: server ignored Range (or none was sent)
            offset, mode = 0, "wb"
        length = resp.headers.get("Content-Length")
        expected = offset + int(length) if length is not None else size
        got = offset
        with open(part, mode) as f, tqdm(total=expected, initial=offset, unit="B", unit_scale=True,
                                          unit_divisor=1024, desc=desc, disable=not progress, leave=False) as bar:
            while True:
                block = resp.read(CHUNK)
                if not block:
                    break
                f.write(block)
                got += len(block)
                bar.update(len(block))
        if expected is not None and got < expected:
            raise _Incomplete(f"connection closed after {got} of {expected} bytes")
    return url


def local_path(url: str) -> Path | None:
    """The local file a ``file://`` URL names (None for any other scheme).  Only local
    absolute paths: ``file:///PATH`` or ``file://localhost/PATH``, no query or fragment;
    percent-escapes are decoded (``Path.as_uri`` writes them)."""
    parts = urllib.parse.urlparse(url)
    if parts.scheme.lower() != "file":
        return None
    if parts.netloc not in ("", "localhost"):
        raise DownloadError(f"{url}: a file URL must name a local path (file:///PATH), not host {parts.netloc!r}")
    if parts.query or parts.fragment or parts.params:
        raise DownloadError(f"{url}: a file URL must not have a query or fragment")
    path = Path(urllib.request.url2pathname(parts.path))
    if not path.is_absolute():
        raise DownloadError(f"{url}: a file URL must name an absolute path")
    return path


def _copy_local(url: str, src: Path, part: Path, progress: bool, desc: str) -> None:
    """Put the regular file ``src`` at ``part``: a hard link where the file system
    allows one (a 20 GB mirror file is not duplicated; nothing here ever writes to
    ``part`` or ``dest``), else a copy from byte 0."""
    try:
        st = src.stat()
    except FileNotFoundError:
        raise DownloadError(f"{url}: no such file") from None
    except OSError as e:
        raise DownloadError(f"{url}: cannot read it: {e.strerror or e}") from None
    if not stat.S_ISREG(st.st_mode):
        raise DownloadError(f"{url}: not a regular file")
    part.unlink(missing_ok=True)
    try:
        os.link(src, part)
        return
    except OSError:           # another file system, or links not permitted: copy
        pass
    try:
        with open(src, "rb") as fin, open(part, "wb") as fout, tqdm(
                total=st.st_size, unit="B", unit_scale=True, unit_divisor=1024, desc=desc,
                disable=not progress, leave=False) as bar:
            while True:
                block = fin.read(CHUNK)
                if not block:
                    break
                fout.write(block)
                bar.update(len(block))
    except OSError as e:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: cannot copy it: {e.strerror or e}") from None


def download(url: str, dest: str | os.PathLike, sha256: str | None = None, md5: str | None = None,
             size: int | None = None, retries: int = 5, backoff: float = 2.0, timeout: float = 60.0,
             progress: bool = True) -> Path:
    """Download ``url`` to ``dest`` (resumable, verified, atomic).  Returns ``dest``.

    * ``dest`` already present and verified: nothing is fetched.  Present but not
      matching: it is deleted and fetched again.
    * the bytes go to ``dest.part``; a rerun continues from its end with
      ``Range: bytes=N-`` (a 200 answer restarts it);
    * connection errors, short reads and HTTP 5xx/429 are retried ``retries`` times,
      sleeping ``backoff * 2**k`` seconds; other HTTP errors fail at once;
    * when complete, size / sha256 / md5 are checked BEFORE the rename to ``dest``; a
      mismatch deletes the partial and raises :class:`ChecksumError`;
    * a ``file://`` URL (:func:`local_path`) is hard-linked or copied to ``dest.part``,
      then verified and renamed the same way; a missing source fails at once.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    with file_lock(dest.with_name(dest.name + ".lock")):
        if dest.exists():
            try:
                verify_file(dest, sha256, md5, size)
                return dest
            except ChecksumError as e:
                print(f"warning: {e}; downloading it again", flush=True)
                dest.unlink()
        src = local_path(url)
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        attempt, current = 0, url
        if src is not None:
            _copy_local(url, src, part, progress, dest.name)
        while src is None:
            try:
                nxt = _transfer_once(opener, current, part, size, timeout, progress, dest.name)
                if nxt != current:             # Google Drive confirm page: follow it
                    current = nxt
                    continue
                break
            except DownloadError:
                raise
            except _RETRYABLE as e:
                if attempt >= retries:
                    have = part.stat().st_size if part.exists() else 0
                    raise DownloadError(f"{url}: {e.__class__.__name__}: {e} (gave up after {attempt + 1} "
                                        f"attempts; {have} bytes kept in {part.name}, rerun to resume)") from None
                delay = backoff * (2 ** attempt)
                attempt += 1
                if progress:
                    print(f"{dest.name}: {e}; retry {attempt}/{retries} in {delay:.0f}s", flush=True)
                time.sleep(delay)
        if not part.exists():
            part.touch()
        try:
            verify_file(part, sha256, md5, size)
        except ChecksumError as e:
            part.unlink(missing_ok=True)
            raise ChecksumError(f"{url}: downloaded file is corrupt ({e}); deleted it") from None
        os.replace(part, dest)
    return dest
