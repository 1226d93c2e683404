"""graphdrivers.testing's own parts: which drivers a run covers, and where each starts.

A temporary ``*.dist-info`` on sys.path registers home makers exactly as an
installed third-party package would (as in test_registry.py).
"""
from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

import graphdrivers
from graphdrivers.testing import homes, selection

MAKERS = textwrap.dedent('''
    import contextlib

    @contextlib.contextmanager
    def made(tmp_path):
        home = tmp_path / "made-home"
        home.mkdir()
        try:
            yield home, {"fake.flag": "1"}
        finally:
            (tmp_path / "released").touch()
''')


def _install(site: Path, dist: str, entry_points: str) -> None:
    info = site / f"{dist}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(textwrap.dedent(entry_points))


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A fresh site dir on sys.path, with the home makers' lookup forgotten before and after."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "gd_fake_homes.py").write_text(MAKERS)
    monkeypatch.syspath_prepend(str(site))
    homes._registered.cache_clear()
    yield site
    homes._registered.cache_clear()
    sys.modules.pop("gd_fake_homes", None)


# -- selection -----------------------------------------------------------------------

def test_every_installed_driver_without_a_choice(monkeypatch):
    monkeypatch.delenv(selection.ENV, raising=False)
    assert selection.driver_names() == graphdrivers.available()
    assert not selection.explicitly_requested("vfs")


def test_named_drivers_sorted_once_each(monkeypatch):
    monkeypatch.setenv(selection.ENV, "vfs, overlay2,vfs,")
    assert selection.driver_names() == ["overlay2", "vfs"]
    assert selection.explicitly_requested("vfs")
    assert not selection.explicitly_requested("btrfs")


def test_a_named_driver_that_is_not_installed_stays(monkeypatch):
    """Dropping it would let a misspelt name pass a run that tested nothing."""
    monkeypatch.setenv(selection.ENV, "no-such-driver")
    assert selection.driver_names() == ["no-such-driver"]


def test_skip_unless_requested(monkeypatch):
    monkeypatch.setenv(selection.ENV, "vfs")
    with pytest.raises(graphdrivers.NotSupported, match="needs a kernel"):
        selection.skip_unless_requested("vfs", graphdrivers.NotSupported("needs a kernel"))
    with pytest.raises(pytest.skip.Exception, match="overlay2 cannot run here: needs a kernel"):
        selection.skip_unless_requested("overlay2", graphdrivers.NotSupported("needs a kernel"))


# -- homes ---------------------------------------------------------------------------

def test_the_built_in_makers_are_registered():
    from graphdrivers.btrfs import testing as btrfs
    from graphdrivers.devmapper import testing as devicemapper
    assert homes.home_maker("btrfs") is btrfs.backend
    assert homes.home_maker("devicemapper") is devicemapper.backend


def test_a_driver_without_a_maker_gets_a_plain_directory(tmp_path):
    assert homes.home_maker("vfs") is None
    with homes.driver_home("vfs", tmp_path) as (home, options):
        assert (home, options) == (tmp_path / "home", {})


def test_a_registered_maker_makes_and_releases_the_home(site, tmp_path):
    _install(site, "gd_fake_homes", """
        [graphdrivers.testing.homes]
        fake = gd_fake_homes:made
    """)
    with homes.driver_home("fake", tmp_path) as (home, options):
        assert home == tmp_path / "made-home" and home.is_dir()
        assert options == {"fake.flag": "1"}
        assert not (tmp_path / "released").exists()
    assert (tmp_path / "released").exists()


def test_two_makers_for_one_driver_is_an_error(site, tmp_path):
    for dist in ("gd_fake_homes", "gd_other_homes"):
        _install(site, dist, """
            [graphdrivers.testing.homes]
            fake = gd_fake_homes:made
        """)
    with pytest.raises(RuntimeError, match="several home makers are registered for 'fake'"):
        homes.home_maker("fake")
