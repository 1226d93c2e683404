"""Driver discovery and loading through entry points, with fake third-party drivers.

A temporary ``*.dist-info`` on sys.path registers extra entry points in the
``graphdrivers.drivers`` namespace exactly as an installed package would.
"""
from __future__ import annotations

import sys
import textwrap

import pytest

import graphdrivers
from graphdrivers.errors import DriverError, NotSupported

FAKE_MODULE = textwrap.dedent('''
    import pathlib
    from graphdrivers import Driver, NotSupported
    from graphdrivers.options import Option, parse_options, parse_bool

    class FakeDriver(Driver):
        name = "fake"
        OPTIONS = {"fake.flag": Option(parse_bool, False)}

        def __init__(self, home, options=None):
            super().__init__(home, options)
            self.options = parse_options(options, self.OPTIONS)

        def create(self, id, parent=None, *, rw=False, mount_label="", storage_opt=None):
            (self.home / id).mkdir()
        def remove(self, id): (self.home / id).rmdir()
        def mount(self, id, mount_label=""): return self.home / id
        def unmount(self, id): pass
        def exists(self, id): return (self.home / id).is_dir()
        def status(self): return [("fake", "yes")]
        def metadata(self, id): return {}
        def cleanup(self): pass
        def diff(self, id, parent=None): raise NotImplementedError
        def changes(self, id, parent=None): return []
        def apply_diff(self, id, parent, diff): return 0
        def diff_size(self, id, parent=None): return 0

    class Unsupported(FakeDriver):
        name = "unsupported"
        @classmethod
        def probe(cls, home):
            raise NotSupported("needs the frobnicator kernel module")

    class Crashing(FakeDriver):
        name = "crashing"
        @classmethod
        def probe(cls, home):
            raise RuntimeError("bug in a third-party driver")
''')

ENTRY_POINTS = textwrap.dedent('''
    [graphdrivers.drivers]
    fake = gd_fake_drivers:FakeDriver
    unsupported = gd_fake_drivers:Unsupported
    crashing = gd_fake_drivers:Crashing
    broken = gd_no_such_module_xyz:Driver
    missing-attr = gd_fake_drivers:NoSuchClass
''')


@pytest.fixture
def fake_drivers(tmp_path, monkeypatch):
    site = tmp_path / "site"
    dist = site / "gd_fake_drivers-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: gd-fake-drivers\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    (site / "gd_fake_drivers.py").write_text(FAKE_MODULE)
    monkeypatch.syspath_prepend(str(site))
    # stevedore keeps entry points per namespace for the life of the process:
    # start from an empty cache so it sees this "installed" package
    from stevedore import ExtensionManager
    monkeypatch.setattr(ExtensionManager, "ENTRY_POINT_CACHE", {})
    from stevedore import _cache   # and its on-disk cache out of the real home
    monkeypatch.setattr(_cache._c, "_dir", str(tmp_path / "stevedore-cache"))
    yield
    sys.modules.pop("gd_fake_drivers", None)


def test_available_is_sorted_and_has_vfs():
    names = graphdrivers.available()
    assert names == sorted(names)
    assert "vfs" in names


def test_available_lists_broken_entries_without_crashing(fake_drivers):
    names = graphdrivers.available()
    assert names == sorted(names)
    assert {"fake", "unsupported", "crashing", "broken", "missing-attr", "vfs"} <= set(names)


def test_describe_reports_each_reason(fake_drivers, tmp_path):
    report = dict(graphdrivers.describe(tmp_path / "home"))
    assert report["fake"] is None
    assert "frobnicator" in report["unsupported"]
    assert "bug in a third-party driver" in report["crashing"]
    assert "gd_no_such_module_xyz" in report["broken"]
    assert "NoSuchClass" in report["missing-attr"]
    assert [name for name, _ in graphdrivers.describe(tmp_path / "home")] == \
        graphdrivers.available()


def test_load_broken_driver_says_why(fake_drivers, tmp_path):
    with pytest.raises(NotSupported) as info:
        graphdrivers.load("broken", tmp_path / "home")
    assert "gd_no_such_module_xyz" in str(info.value)
    with pytest.raises(NotSupported) as info:
        graphdrivers.load("unsupported", tmp_path / "home")
    assert "frobnicator" in str(info.value)
    assert not (tmp_path / "home" / "unsupported").exists()


def test_load_unknown_name_lists_installed(tmp_path):
    with pytest.raises(NotSupported) as info:
        graphdrivers.load("zfs-not-here", tmp_path / "home")
    assert "zfs-not-here" in str(info.value) and "vfs" in str(info.value)


def test_load_creates_home_and_driver_dir(fake_drivers, tmp_path):
    home = tmp_path / "a" / "b"
    drv = graphdrivers.load("fake", home, {"fake.flag": "true"})
    assert drv.home == home / "fake" and drv.home.is_dir()
    assert drv.options["fake.flag"] is True


def test_load_with_bad_option_leaves_no_state(fake_drivers, tmp_path):
    home = tmp_path / "home"
    with pytest.raises(DriverError):
        graphdrivers.load("fake", home, {"fake.nope": "1"})
    assert not (home / "fake").exists(), "an empty state dir would pin auto-selection"


def test_auto_selection_prefers_prior_state(fake_drivers, tmp_path):
    home = tmp_path / "home"
    (home / "fake").mkdir(parents=True)
    (home / "fake" / "layer").mkdir()
    # fake is last in priority order, but its state is here: never switch silently
    drv = graphdrivers.load(None, home)
    assert drv.name == "fake"


def test_auto_selection_ignores_empty_state_dirs(fake_drivers, tmp_path):
    home = tmp_path / "home"
    (home / "fake").mkdir(parents=True)      # empty: no prior state
    (home / "vfs").mkdir()
    (home / "vfs" / "dir").mkdir()
    drv = graphdrivers.load(None, home)
    assert drv.name == "vfs"


def test_two_prior_drivers_is_an_error_naming_both(fake_drivers, tmp_path):
    home = tmp_path / "home"
    for name in ("fake", "vfs"):
        (home / name / "something").mkdir(parents=True)
    with pytest.raises(DriverError) as info:
        graphdrivers.load(None, home)
    assert "fake" in str(info.value) and "vfs" in str(info.value)


def test_auto_selection_skips_unsupported(fake_drivers, tmp_path, monkeypatch):
    import graphdrivers.registry as registry
    monkeypatch.setattr(registry, "PRIORITY", ("unsupported", "crashing-never-listed", "fake"))
    drv = graphdrivers.load(None, tmp_path / "home")
    assert drv.name == "fake"
    assert not (tmp_path / "home" / "unsupported").exists()


def test_auto_selection_reports_every_reason_when_nothing_works(fake_drivers, tmp_path,
                                                                monkeypatch):
    import graphdrivers.registry as registry
    monkeypatch.setattr(registry, "available", lambda: ["broken", "unsupported"])
    with pytest.raises(NotSupported) as info:
        graphdrivers.load(None, tmp_path / "home")
    assert "frobnicator" in str(info.value) and "gd_no_such_module_xyz" in str(info.value)
