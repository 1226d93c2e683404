"""Fixtures: containerd 1.6 alone (built-in snapshotters) or with `graphdrivers
snapshotter` for each driver that can run here (helpers in engine.py, stack.py)."""
from __future__ import annotations

import pytest

from containerd import image, stack
from containerd.engine import missing_tools

WHY = missing_tools()


def _cannot_serve(driver: str) -> str | None:
    """Why `graphdrivers snapshotter` refuses ``driver`` (a known defect), or None."""
    from graphdrivers.capabilities import LayerMounts
    from graphdrivers.registry import driver_class
    try:
        cls = driver_class(driver)
    except Exception:        # not installed here: the fixtures skip it with the reason
        return None
    if issubclass(cls, LayerMounts):
        return None
    return (f"{driver} lacks the LayerMounts capability, so the snapshotter refuses to "
            "serve it (containerd would mount the activated thin device)")


def pytest_collection_modifyitems(items):
    for item in items:
        if "tests/containerd/" not in str(item.fspath):
            continue
        if WHY is not None:
            item.add_marker(pytest.mark.skip(reason=f"no containerd here: {WHY}"))
            continue
        driver = getattr(item, "callspec", None) and item.callspec.params.get("driver_name")
        defect = driver and _cannot_serve(driver)
        if defect:
            # one case runs and must fail (strict); the others would fail the same
            # way after the same slow set-up (a thin pool under emulation, ~100 s)
            runs = item.originalname == "test_cycle_matches_builtin_across_restarts"
            item.add_marker(pytest.mark.xfail(strict=True, run=runs, reason=defect))


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
