"""Fixtures shared by the image tests (each module boots its own VMs and stops them at its end)."""

from __future__ import annotations

from pathlib import Path

import pytest
from image_vm import make_key


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("image")


@pytest.fixture(scope="module")
def key(workdir: Path) -> Path:
    """A throwaway SSH key for root (the image has no password)."""
    return make_key(workdir)
