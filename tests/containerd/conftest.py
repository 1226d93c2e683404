"""Fixtures: containerd 1.6 alone (built-in snapshotters) or with `graphdrivers
snapshotter` for each driver that can run here (helpers in engine.py, stack.py)."""
from __future__ import annotations

import pytest

from containerd import image, stack
from containerd.engine import missing_tools

WHY = missing_tools()


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/containerd/" in str(item.fspath) and WHY is not None:
            item.add_marker(pytest.mark.skip(reason=f"no containerd here: {WHY}"))


@pytest.fixture
def e2e_image(tmp_path) -> image.Image:
    return image.docker_save(tmp_path / "image.tar")


@pytest.fixture
def builtin_stack(tmp_path):
    """containerd with only its built-in snapshotters."""
    with stack.running(tmp_path / "e2e") as running:
        yield running


@pytest.fixture
def gd_stack(driver_name, home_and_options, tmp_path):
    """containerd with `graphdrivers snapshotter --driver <driver_name>` as a proxy."""
    home, options = home_and_options
    with stack.running(tmp_path / "e2e", driver_name, home, options) as running:
        yield running
