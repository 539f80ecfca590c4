"""Test-only helpers, outside the installed package (docs/ARCHITECTURE.md, "Test-only
helpers"): importable from every test folder as ``helpers``, since pytest puts ``tests/``
(a folder without ``__init__.py``, holding ``conftest.py``) on ``sys.path``.

* :mod:`.tiny` -- a tiny prepared dataset (``make_tiny_dataset``) and tiny run configs
  (``tiny_config``);
* :mod:`.memory` -- :class:`SavedTensorMeter`, peak bytes autograd saves for backward
  (the O(1)-memory check of the adjoint quality loss and its benchmark).
"""
from .memory import SavedTensorMeter
from .tiny import make_tiny_dataset, tiny_config

__all__ = ["SavedTensorMeter", "make_tiny_dataset", "tiny_config"]
