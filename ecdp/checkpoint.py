"""Atomic checkpoint save and safe load (``weights_only=True``)."""
from __future__ import annotations

import os
import pickle
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch

FORMAT = "ecdp-bench/1"


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb"):
    """Open a temp file in ``path``'s folder; on success fsync and rename it to ``path``,
    on any error remove it.  A file under its final name is always complete.  Every
    checkpoint, table, metrics file and run record of the suite is written this way."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name stays within 255 bytes however long the final name is
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name.encode()[:200].decode(errors='ignore')}.", suffix=".part",
                               dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp's 0600 -> what open() would have given
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_writable(path: str | Path, overwrite: bool = False) -> Path:
    """Raise ``ValueError`` (one line) unless a file can be written at ``path``: not a
    folder, no file among its parents, not an existing file unless ``overwrite`` (what
    a user made is never replaced without being asked: the CLI's ``--overwrite``), and
    the nearest existing folder takes a new file (probed with a temporary file, removed
    at once; ``/proc`` and read-only mounts fail here).  Creates nothing.  Called before
    the work whose result goes there."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{path}: is a folder, not a file")
    if path.exists() and not overwrite:
        raise ValueError(f"{path} exists; pass --overwrite to replace it")
    existing = next((p for p in path.parents if p.exists()), Path("."))
    if not existing.is_dir():
        raise ValueError(f"{path}: {existing} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".probe.", dir=existing)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"{path}: cannot write there ({e.strerror or e})") from None
    return path


def all_finite(tensors) -> bool:
    """Whether every floating-point tensor holds only finite values (one reduction per
    tensor, one sync): the training loop's check after each step and the loader's."""
    tensors = [t for t in tensors if t.dtype.is_floating_point and t.numel()]
    if not tensors:
        return True
    return bool(torch.stack([t.detach().float().abs().amax() for t in tensors]).isfinite().all())


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file (checkpoints in summaries, weights, prepared images)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save(obj: dict, path: str | Path) -> None:
    """torch.save through :func:`atomic_open`: a killed run never leaves a torn checkpoint."""
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)


def load(path: str | Path, map_location="cpu") -> dict:
    """Load with ``weights_only=True`` (no arbitrary code from a checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} not found")
    if path.is_dir():
        raise ValueError(f"{path} is a folder, not a checkpoint file")
    if path.stat().st_size == 0:
        raise ValueError(f"{path} is empty: not a checkpoint")
    try:
        with warnings.catch_warnings():   # torch's unpickler warns about what it then refuses
            warnings.simplefilter("ignore")
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{path}: refused, it holds objects other than tensors and plain data "
                         "(checkpoints load with weights_only=True)") from None
    except Exception as e:  # noqa: BLE001 - re-raised as one clear line
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise ValueError(f"{path}: not a loadable ecdp-bench checkpoint ({e.__class__.__name__}{': ' + first if first else ''})") from None


PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
"""Precision name -> autocast dtype (None: no autocast), for training (``train.precision``)
and sampling (``--precision``)."""

SPEED = {"precision": "fp32", "channels_last": False, "compile": False}
"""Sampling speed settings (``ecdp sr / evaluate / time --precision --channels-last
--compile``), the test-time counterparts of ``train.precision / channels_last / compile``.
fp32 by default: the adaptive solvers' tolerances (dopri5 at 1e-4, eq. 13) are finer than
bf16's resolution (8 mantissa bits, a relative step of 2^-8 ~ 4e-3), so bf16 sampling
changes what the tables measure and is only for speed studies."""


def add_speed_args(p) -> None:
    """The ``SPEED`` options of one sampling command."""
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="autocast the network evaluations (default fp32; fp16 needs CUDA)")
    p.add_argument("--channels-last", action="store_true", help="NHWC memory format for the networks and inputs")
    p.add_argument("--compile", action="store_true", help="torch.compile each network of the method")


def speed_options(args) -> dict:
    return {"precision": args.precision, "channels_last": bool(args.channels_last), "compile": bool(args.compile)}


def configure_inference(method, device, precision: str = "fp32", channels_last: bool = False,
                        compile: bool = False):
    """Apply the ``SPEED`` settings to a loaded method, in place: channels_last moves its
    weights to NHWC (convolutions then keep activations NHWC) and its inputs too, compile
    compiles each child network (``nn.Module.compile``; lazily, on first use), precision
    wraps ``super_resolve`` in autocast and returns the image in fp32.  Defaults: nothing
    changes."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision fp16 needs a CUDA device; use bf16 on CPU")
    if compile:
        for child in method.children():
            if any(True for _ in child.parameters()):
                child.compile()
    if channels_last:
        method.to(memory_format=torch.channels_last)
    amp = PRECISIONS[precision]
    if amp is None and not channels_last:
        return method
    plain = method.super_resolve

    def super_resolve(lr, *args, **kwargs):
        if channels_last and lr.dim() == 4:
            lr = lr.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=amp or torch.bfloat16, enabled=amp is not None):
            sr, stats = plain(lr, *args, **kwargs)
        return sr.float(), stats

    method.super_resolve = super_resolve
    return method


def load_method(path: str | Path, device="cpu", sampler: dict | None = None, quiet: bool = False, **speed):
    """(method in eval mode with EMA weights, checkpoint dict) from a final checkpoint.
    ``sampler``: the user's sampler options, checked by the method before it is built (a
    ``{"preset": NAME}`` is replaced in place by the method's ``SAMPLER_PRESETS[NAME]``);
    ``quiet``: no note when ``path`` is a training checkpoint (a caller that asks for a
    stage state on purpose, as a distilled student's teacher);
    ``speed``: the ``SPEED`` settings (``configure_inference``)."""
    from .registry import build_method, method_class

    ck = load(path)
    if not isinstance(ck, dict) or ck.get("format") != FORMAT or "model" not in ck or "config" not in ck:
        fmt = ck.get("format") if isinstance(ck, dict) else type(ck).__name__
        raise ValueError(f"{path}: not an ecdp-bench model checkpoint (format {fmt!r})")
    cls = method_class(ck["config"].get("method", "ecdp"))
    if sampler is not None and "preset" in sampler:   # a named preset: expanded in place for the caller
        from .method import expand_sampler_preset

        expanded = expand_sampler_preset(cls, sampler)
        sampler.clear()
        sampler.update(expanded)
    check = getattr(cls, "check_sampler", None)
    if check and sampler is not None:
        check(ck["config"], sampler)
    weights = ck["model"]
    if "optimizer" in ck:   # a training checkpoint (checkpoint.pt), not a finished model: say which weights
        import sys

        which = "EMA" if ck.get("ema") else "live (no EMA yet)"
        weights = ck.get("ema") or ck["model"]
        if not quiet:
            print(f"note: {path} is a training checkpoint (step {ck.get('global_step')}): using its {which} weights; "
                  "final.pt is the finished model", file=sys.stderr)
    bad = [] if all_finite([v for v in weights.values() if torch.is_tensor(v)]) else \
        [k for k, v in weights.items() if torch.is_tensor(v) and not all_finite([v])]
    if bad:
        raise ValueError(f"{path}: {len(bad)} weight tensor(s) hold NaN or Inf (e.g. {bad[0]}): "
                         "the run diverged or the file is damaged")
    try:
        method = build_method(ck["config"], ck.get("meta") or {})
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: its stored config / dataset meta cannot build the model ({e})") from None
    try:
        method.load_state_dict(weights)
    except RuntimeError as e:
        n = str(e).count("\n\t") or 1
        raise ValueError(f"{path}: the weights do not match the stored config ({n} key / shape mismatch(es); "
                         f"{str(e).splitlines()[1].strip()[:150] if len(str(e).splitlines()) > 1 else ''})") from None
    return configure_inference(method.to(device).eval(), device, **{**SPEED, **speed}), ck
