"""Shared test helpers."""

from __future__ import annotations

import pytest

from compact.data import fashion_mnist as fm

needs_fmnist = pytest.mark.skipif(
    fm.find_fashion_mnist() is None, reason=f"Fashion-MNIST not installed ({fm.INSTALL_HINT})"
)
