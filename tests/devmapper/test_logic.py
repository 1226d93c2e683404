"""Host-side tests of the devicemapper driver's pure logic: options, records, ids, transactions.

The kernel parts run in the VM (tests/devmapper/test_driver*.py); here the pool is a
small in-memory stand-in of the thin-pool *messages* (ids and a transaction id), which is
all the transaction log talks to.
"""
from __future__ import annotations

import errno
import json

import pytest

from graphdrivers.devmapper.config import GiB, MiB, parse_config
from graphdrivers.devmapper.metadata import MAX_DEVICE_ID, DeviceIdAllocator, DeviceRecord, MetadataStore
from graphdrivers.devmapper.poolstatus import parse_pool_status
from graphdrivers.devmapper.transaction import TransactionLog
from graphdrivers.errors import InvalidOption, NoSpace


# -- options -------------------------------------------------------------
def test_defaults_follow_docker():
    cfg = parse_config({})
    assert cfg.basesize == 10 * GiB and not cfg.basesize_given
    assert cfg.loopdatasize == 100 * GiB and cfg.loopmetadatasize == 2 * GiB
    assert cfg.blocksize == 64 * 1024 and cfg.min_free_space == 10
    assert cfg.uses_loop_files and cfg.loop_direct_io is False
    assert cfg.thinp_percent == 95 and cfg.thinp_metapercent == 1


def test_every_option_parses():
    cfg = parse_config({
        "dm.basesize": "20G", "dm.loopdatasize": "2GB", "dm.loopmetadatasize": "64MB",
        "dm.loopdirectio": "true", "dm.fs": "ext4", "dm.mkfsarg": "-O ^has_journal -m 0",
        "dm.mountopt": "noatime", "dm.blocksize": "512K", "dm.blkdiscard": "false",
        "dm.override_udev_sync_check": "true", "dm.use_deferred_removal": "true",
        "dm.use_deferred_deletion": "true", "dm.min_free_space": "5%",
        "dm.xfs_nospace_max_retries": "0", "dm.libdm_log_level": "7",
        "DM.Thinp_Autoextend_Threshold": "70", "dm.thinp_autoextend_percent": "10%"})
    assert cfg.basesize == 20 * GiB and cfg.basesize_given
    assert cfg.loopmetadatasize == 64 * MiB and cfg.loop_direct_io
    assert cfg.mkfsargs == ["-O", "^has_journal", "-m", "0"]
    assert cfg.blocksize == 512 * 1024 and cfg.min_free_space == 5
    assert cfg.xfs_nospace_max_retries == 0 and cfg.log_level == 7
    assert cfg.thinp_autoextend_threshold == 70 and cfg.thinp_autoextend_percent == 10


def test_pool_sources():
    assert parse_config({"dm.thinpooldev": "/dev/mapper/mypool"}).thinpooldev == "mypool"
    cfg = parse_config({"dm.datadev": "/dev/vdb", "dm.metadatadev": "/dev/vdc"})
    assert not cfg.uses_loop_files
    cfg = parse_config({"dm.directlvm_device": "/dev/vdd", "dm.thinp_percent": "90",
                        "dm.thinp_metapercent": "2"})
    assert (cfg.thinp_percent, cfg.thinp_metapercent) == (90, 2)


@pytest.mark.parametrize("options, words", [
    ({"dm.nosuch": "1"}, "unknown"),
    ({"dm.basesize": "ten"}, "dm.basesize"),
    ({"dm.basesize": "1M"}, "at least"),
    ({"dm.fs": "btrfs"}, "xfs and ext4"),
    ({"dm.blocksize": "100K"}, "64KB"),
    ({"dm.blocksize": "2G"}, "64KB"),
    ({"dm.min_free_space": "10"}, "percentage"),
    ({"dm.min_free_space": "100%"}, "percentage"),
    ({"dm.libdm_log_level": "9"}, "from 2"),
    ({"dm.xfs_nospace_max_retries": "-1"}, "positive"),
    ({"dm.datadev": "/dev/vdb"}, "together"),
    ({"dm.thinpooldev": "p", "dm.datadev": "/dev/a", "dm.metadatadev": "/dev/b"}, "exclude"),
    ({"dm.directlvm_device": "/dev/vdd", "dm.thinp_percent": "90"}, "together"),
    ({"dm.directlvm_device": "/dev/vdd", "dm.thinp_percent": "90", "dm.thinp_metapercent": "20"}, "exceed"),
    ({"dm.thinp_percent": "90", "dm.thinp_metapercent": "2"}, "need dm.directlvm_device"),
    ({"dm.use_deferred_removal": "false", "dm.use_deferred_deletion": "true"}, "deferred"),
    ({"dm.thinpooldev": "/dev/sda/x"}, "/dev/mapper"),
    ({"dm.loopdirectio": "maybe"}, "boolean"),
])
def test_bad_options_refused(options, words):
    with pytest.raises(InvalidOption, match=words):
        parse_config(options)


# -- ids and records -----------------------------------------------------
def test_allocator_skips_used_and_wraps():
    alloc = DeviceIdAllocator({1, 2, 4}, next_id=0)
    assert [alloc.allocate() for _ in range(3)] == [3, 5, 6]
    alloc.free(5)
    assert alloc.allocate() == 7          # searches forward from the last id first
    wrap = DeviceIdAllocator({MAX_DEVICE_ID, 0, 1}, next_id=MAX_DEVICE_ID - 1)
    assert wrap.allocate() == 2           # 24-bit wrap-around


def test_allocator_exhausted():
    # the real space (2**24 ids) would take gigabytes of memory here; same logic, 8 ids
    alloc = DeviceIdAllocator(set(range(6)), max_id=7)
    assert {alloc.allocate(), alloc.allocate()} == {6, 7}
    with pytest.raises(NoSpace, match="all 8 thin device ids"):
        alloc.allocate()
    assert DeviceIdAllocator().allocate() == 1 and MAX_DEVICE_ID == 2**24 - 1


def test_store_roundtrip_and_allocator_rebuild(tmp_path):
    store = MetadataStore(tmp_path / "metadata")
    store.save(DeviceRecord("", 1, 512 * MiB, initialized=True))
    store.save(DeviceRecord("base", 2, 512 * MiB, initialized=True))  # a layer named base
    store.save(DeviceRecord("child", 3, 512 * MiB, initialized=True))
    gone = store.mark_deleted(DeviceRecord("old", 9, 1, initialized=True))
    assert gone.deleted and store.layer("old") is None
    assert store.base().device_id == 1 and store.layer("base").device_id == 2
    assert [r.layer for r in store.layers()] == ["base", "child"]
    assert [r.device_id for r in store.deleted()] == [9]
    store.save_deviceset({"next_device_id": 3})
    alloc = MetadataStore(tmp_path / "metadata").allocator()
    assert alloc.used == {1, 2, 3, 9}
    assert alloc.allocate() == 4
    # files are plain JSON an operator can read; the layer graph is not in them
    assert json.loads((tmp_path / "metadata/layers/child").read_text())["device_id"] == 3
    assert "parent" not in json.loads((tmp_path / "metadata/layers/child").read_text())


def test_parents_of_an_old_home_are_read(tmp_path):
    """Records written before the layer store named each layer's parent: the first load
    builds the store from them (layer_parents); the device record ignores the key."""
    store = MetadataStore(tmp_path / "metadata")
    for layer, device_id, parent in (("a", 1, None), ("b", 2, "a")):
        (tmp_path / "metadata/layers" / layer).write_text(json.dumps(
            {"layer": layer, "device_id": device_id, "size": 1, "transaction_id": device_id,
             "initialized": True, "deleted": False, "parent": parent}))
    assert list(store.layer_parents()) == [("a", None), ("b", "a")]
    assert store.layer("b") == DeviceRecord("b", 2, 1, 2, initialized=True)
    assert store.layer_ids() == ["a", "b"]


def test_damaged_record_is_reported(tmp_path):
    store = MetadataStore(tmp_path / "m")
    (tmp_path / "m/layers/x").write_text("{not json")
    with pytest.raises(Exception, match="damaged"):
        store.layer("x")


def test_stale_temp_files_removed(tmp_path):
    MetadataStore(tmp_path / "m")
    stale = tmp_path / "m/layers/.x.tmp-123"
    stale.write_text("{}")
    MetadataStore(tmp_path / "m")
    assert not stale.exists()


def test_pool_status_line():
    st = parse_pool_status(4194304, "7 12/16384 100/32768 - rw discard_passdown error_if_no_space - 1024")
    assert st.transaction_id == 7 and st.block_sectors == 128
    assert st.data_used == 100 * 65536 and st.meta_total == 16384 * 4096
    assert st.mode == "rw" and not st.needs_check
    full = parse_pool_status(4194304, "7 12/16384 32768/32768 - out_of_data_space discard_passdown error_if_no_space needs_check 1024")
    assert full.mode == "out_of_data_space" and full.needs_check
    assert parse_pool_status(10, "Fail").mode == "fail"


# -- transactions --------------------------------------------------------
class MessagePool:
    """The thin-pool message semantics the transaction log relies on (ids + transaction id)."""

    def __init__(self):
        self.ids: set[int] = set()
        self.busy: set[int] = set()
        self.tid = 0

    def transaction_id(self):
        return self.tid

    def set_transaction_id(self, old, new):
        if old != self.tid:
            raise OSError(errno.EINVAL, "wrong old id")
        self.tid = new

    def create_thin(self, device_id):
        if device_id in self.ids:
            raise OSError(errno.EEXIST, "exists")
        self.ids.add(device_id)

    def delete_thin(self, device_id):
        if device_id in self.busy:
            raise OSError(errno.EBUSY, "busy")
        if device_id not in self.ids:
            raise OSError(errno.ENODATA, "no such device")
        self.ids.remove(device_id)


_ABANDONED = []   # open transactions of "crashed" runs: kept alive so no cleanup code runs


@pytest.fixture(autouse=True)
def _drop_abandoned():
    yield
    _ABANDONED.clear()


def _create(store, log, pool, layer, device_id, *, stop_after=None):
    """A create run up to a step; stop_after simulates the crash by abandoning the log."""
    txn_cm = log.open("create", "create", layer, device_id)
    _ABANDONED.append(txn_cm)
    txn = txn_cm.__enter__()
    if stop_after == "open":
        return
    pool.create_thin(device_id)
    if stop_after == "message":
        return
    store.save(DeviceRecord(layer, device_id, 1, txn.open_transaction_id, initialized=True))
    if stop_after == "register":
        return
    txn_cm.__exit__(None, None, None)


@pytest.mark.parametrize("stop_after", ["open", "message", "register", None])
def test_interrupted_create_is_rolled_back(tmp_path, stop_after):
    pool, store = MessagePool(), MetadataStore(tmp_path / "m")
    log = TransactionLog(store, pool)
    _create(store, log, pool, "a", 1)
    _create(store, log, pool, "b", 2, stop_after=stop_after)
    # restart
    store = MetadataStore(tmp_path / "m")
    TransactionLog(store, pool).recover()
    assert store.transaction() is None
    layers = {r.layer: r.device_id for r in store.layers()}
    if stop_after is None:
        assert layers == {"a": 1, "b": 2} and pool.ids == {1, 2}
    else:
        assert layers == {"a": 1} and pool.ids == {1}     # nothing half-made, no id leaked
    assert pool.tid == max(r.transaction_id for r in store.layers())
    assert store.allocator().used == pool.ids


@pytest.mark.parametrize("stop_after", ["open", "message", "register"])
def test_interrupted_delete_is_finished(tmp_path, stop_after):
    pool, store = MessagePool(), MetadataStore(tmp_path / "m")
    log = TransactionLog(store, pool)
    _create(store, log, pool, "a", 1)
    rec = store.layer("a")
    _ABANDONED.append(log.open("delete", "remove", "a", 1))
    _ABANDONED[-1].__enter__()
    if stop_after != "open":
        pool.delete_thin(1)
    if stop_after == "register":
        store.remove(rec)
    TransactionLog(store, pool).recover()
    assert store.layer("a") is None and pool.ids == set() and store.deleted() == []


def test_interrupted_delete_of_busy_device_is_deferred(tmp_path):
    pool, store = MessagePool(), MetadataStore(tmp_path / "m")
    log = TransactionLog(store, pool)
    _create(store, log, pool, "a", 1)
    _ABANDONED.append(log.open("delete", "remove", "a", 1))
    _ABANDONED[-1].__enter__()
    pool.busy.add(1)
    TransactionLog(store, pool).recover()
    assert store.layer("a") is None and [r.device_id for r in store.deleted()] == [1]
    assert store.allocator().is_used(1)       # reserved until the worker deletes it


def test_failed_create_leaves_nothing(tmp_path):
    pool, store = MessagePool(), MetadataStore(tmp_path / "m")
    log = TransactionLog(store, pool)
    with pytest.raises(RuntimeError):
        with log.open("create", "create", "x", 5):
            pool.create_thin(5)
            raise RuntimeError("register failed")
    assert pool.ids == set() and store.transaction() is None and pool.tid == 0


def test_failed_delete_keeps_layer(tmp_path):
    pool, store = MessagePool(), MetadataStore(tmp_path / "m")
    log = TransactionLog(store, pool)
    _create(store, log, pool, "a", 1)
    pool.busy.add(1)
    with pytest.raises(OSError):
        with log.open("delete", "remove", "a", 1):
            pool.delete_thin(1)
    TransactionLog(store, pool).recover()
    assert store.layer("a") is not None and pool.ids == {1}


def test_create_on_another_devices_id_deletes_nothing(tmp_path):
    """Two processes on one pool: one whose allocator is behind opens a create for an id
    the other's device has. The message fails (EEXIST); neither the rollback nor a
    recovery after a crash inside that transaction may delete the other's device."""
    from graphdrivers.devmapper.transaction import NothingMade
    pool, store = MessagePool(), MetadataStore(tmp_path / "m")
    log = TransactionLog(store, pool)
    _create(store, log, pool, "a", 1)
    with pytest.raises(NothingMade):
        with log.open("create", "create", "b", 1):
            try:
                pool.create_thin(1)
            except OSError as exc:
                assert exc.errno == errno.EEXIST
                raise NothingMade() from None
    assert pool.ids == {1} and store.transaction() is None
    _create(store, log, pool, "b", 1, stop_after="open")      # killed before its message
    TransactionLog(store, pool).recover()
    assert pool.ids == {1} and store.layer("a").device_id == 1 and store.transaction() is None


def test_park_queues_a_record_and_frees_its_layer_id(tmp_path):
    store = MetadataStore(tmp_path / "m")
    store.save(DeviceRecord("a", 4, 1, initialized=True))
    store.park(store.layer("a"))
    assert store.layer("a") is None and store.layer_ids() == []
    assert [(r.layer, r.device_id, r.deleted) for r in store.deleted()] == [("a", 4, True)]
    store.save(DeviceRecord("a", 5, 1, initialized=True))     # the id made again at once
    assert store.live_device_ids() == {5} and store.allocator().used == {4, 5}
    store.unpark([4])
    assert store.deleted() == [] and store.allocator().used == {5}


@pytest.mark.parametrize("deleted_before_crash", [0, 1, 2])
def test_interrupted_batch_delete_of_queued_devices_is_finished(tmp_path, deleted_before_crash):
    pool, store = MessagePool(), MetadataStore(tmp_path / "m")
    log = TransactionLog(store, pool)
    for layer, device_id in (("a", 1), ("b", 2), ("keep", 3)):
        _create(store, log, pool, layer, device_id)
    for layer in ("a", "b"):
        store.park(store.layer(layer))
    _ABANDONED.append(log.open("delete-parked", "remove", "", 1, [1, 2]))
    _ABANDONED[-1].__enter__()
    for device_id in [1, 2][:deleted_before_crash]:
        pool.delete_thin(device_id)
    assert store.allocator().is_used(1) and store.allocator().is_used(2)
    TransactionLog(store, pool).recover()
    assert pool.ids == {3} and store.deleted() == [] and store.layer("keep").device_id == 3


def test_batch_recovery_never_deletes_a_live_records_device(tmp_path):
    pool, store = MessagePool(), MetadataStore(tmp_path / "m")
    log = TransactionLog(store, pool)
    _create(store, log, pool, "keep", 3)
    # a queued record naming a live layer's device (damage, or a crash's double record)
    store.save(DeviceRecord("gone", 3, 1, deleted=True))
    _ABANDONED.append(log.open("delete-parked", "remove", "", 3, [3]))
    _ABANDONED[-1].__enter__()
    TransactionLog(store, pool).recover()
    assert pool.ids == {3} and store.layer("keep").device_id == 3
