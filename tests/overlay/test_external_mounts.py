"""overlay2's LayerMounts: what a caller that mounts itself (containerd) gets, and the
depth past which one mount(2) cannot take the chain."""
from __future__ import annotations

import pytest

from graphdrivers.overlay.external import PAGE, TooDeepForOneMount, data_size


def _chain(driver, depth: int) -> str:
    parent = None
    for i in range(depth):
        driver.create(f"l{i}", parent, rw=True)
        parent = f"l{i}"
    return parent


@pytest.fixture
def overlay_driver(tmp_path):
    from overlay.conftest import open_driver
    driver = open_driver(tmp_path / "home")
    if driver.max_depth < 200:
        pytest.skip("chains past 128 need the new mount API (kernel >= 6.8)")
    yield driver
    driver.cleanup()


def test_deep_chain_fits_until_the_page_is_full(overlay_driver):
    top = _chain(overlay_driver, 200)
    fitted = 0
    for i in range(1, 200):
        try:
            (spec,) = overlay_driver.layer_mounts(f"l{i}", readonly=False)
        except TooDeepForOneMount as exc:
            assert f"{i} lower layers" in str(exc) and "at most about" in str(exc)
            break
        assert data_size(spec.options) <= PAGE - 1
        fitted = i
    assert 128 <= fitted < 199, "128 layers (containerd's own test) must mount"
    with pytest.raises(TooDeepForOneMount):
        overlay_driver.layer_mounts(top, readonly=True)
