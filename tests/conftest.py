"""Shared fixtures (helpers live in ``ecdp.testing``)."""
from __future__ import annotations

from pathlib import Path

import pytest

from ecdp.testing import make_tiny_dataset, tiny_config  # noqa: F401 - re-exported for tests


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """Root folder holding the prepared ``tiny4x`` dataset."""
    root = tmp_path_factory.mktemp("data")
    make_tiny_dataset(root)
    return root


