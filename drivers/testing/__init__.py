"""The driver conformance suite, importable: any driver package runs it against itself.

    pip install 'graphdrivers[test]' your-driver
    pytest --pyargs graphdrivers.testing.conformance --graphdriver NAME

``NAME`` is the driver's entry point in the ``graphdrivers.drivers`` group; several
may be given (``--graphdriver a --graphdriver b`` or ``--graphdriver a,b``), and
``GRAPHDRIVERS_TEST_DRIVERS=a,b`` does the same. A driver named so must work: its
failures are errors, not skips. Without either, every installed driver runs and the
ones the machine cannot run are skipped with the reason.

What is here:

- ``conformance``: the tests, and ``conformance.helpers`` (trees, snapshots, tars);
- ``selection``: which drivers a run covers;
- ``homes``: the directory (and options) each driver starts in; a driver that needs
  a prepared backend (a filesystem, a pool) registers a maker in the
  ``graphdrivers.testing.homes`` entry point group, as btrfs and devicemapper do
  (``graphdrivers.btrfs.testing``, ``graphdrivers.devmapper.testing``);
- ``fixtures``: the pytest fixtures (``driver``, ``driver_name``, ``home_and_options``);
- ``plugin``: the ``--graphdriver`` option, registered through the ``pytest11`` entry point;
- ``loopfs``: a fresh filesystem on a loop device, for home makers and tests.

docs/testing.md walks through a third-party driver's run.
"""
