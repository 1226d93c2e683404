"""direct-lvm: build an LVM thin pool on an operator-given disk (dm.directlvm_device).

Done once, at the first load, with the lvm2 tools (as Docker does): pvcreate,
vgcreate, two lvcreate (data 95%VG, metadata 1%VG by default), lvconvert to a
thin pool, and an autoextend profile. The settings are saved in
``setup-config.json``; a later load with other settings is refused, because
LVM cannot redo the layout without destroying the layers. Nothing here runs per
layer operation.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
from pathlib import Path

from graphdrivers.store.atomicfile import write_json
from graphdrivers.errors import DriverError, InvalidOption, NotSupported

from . import blockdev, dm
from .config import Config

log = logging.getLogger(__name__)

VG = "graphdrivers"
LV = "thinpool"
POOL = f"{VG}-{LV}"              # the device-mapper name LVM gives the pool
TOOLS = ("pvcreate", "vgcreate", "lvcreate", "lvconvert", "lvchange")
PROFILE_DIR = Path("/etc/lvm/profile")


def _env() -> dict:
    # never wait for udev (the test VM and containers may have none)
    return dict(os.environ, DM_DISABLE_UDEV="1", LVM_SUPPRESS_FD_WARNINGS="1")


def _lvm(*argv: str) -> str:
    tool = shutil.which(argv[0]) or f"/sbin/{argv[0]}"
    result = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, env=_env())
    if result.returncode != 0:
        raise DriverError(f"devicemapper direct-lvm: {' '.join(argv)} failed: "
                          f"{(result.stderr or result.stdout).strip()}")
    return result.stdout


def wanted(cfg: Config) -> dict:
    return {"directlvm_device": cfg.directlvm_device, "thinp_percent": cfg.thinp_percent,
            "thinp_metapercent": cfg.thinp_metapercent,
            "thinp_autoextend_threshold": cfg.thinp_autoextend_threshold,
            "thinp_autoextend_percent": cfg.thinp_autoextend_percent}


def pool_name() -> str:
    """The thin-pool target: the pool LV itself, or its -tpool layer when LVM stacks one."""
    for name in (POOL, f"{POOL}-tpool"):
        rows = dm.table(name) if dm.info(name) else []
        if rows and rows[0][2] == "thin-pool":
            return name
    return POOL


def setup(home: Path, cfg: Config) -> str:
    """Build (first time) or activate the LVM thin pool; return its device-mapper name."""
    config_file = home / "setup-config.json"
    settings = wanted(cfg)
    if config_file.exists():
        previous = json.loads(config_file.read_text())
        if previous != settings:
            raise InvalidOption(
                f"changing the direct-lvm configuration is not supported (was {previous}, "
                f"now {settings}); keep the old options or start from an empty home")
        if dm.info(POOL) is None:
            _lvm("lvchange", "-ay", f"{VG}/{LV}")
        return pool_name()
    missing = [t for t in TOOLS if not (shutil.which(t) or os.path.exists(f"/sbin/{t}"))]
    if missing:
        raise NotSupported(f"dm.directlvm_device needs the lvm2 tools ({', '.join(missing)} missing)")
    device = cfg.directlvm_device
    blockdev.device_numbers(device)
    blockdev.check_unused(device, "dm.directlvm_device", allow_signature=cfg.directlvm_force)
    _lvm("pvcreate", "-f", device)
    _lvm("vgcreate", VG, device)
    _lvm("lvcreate", "--wipesignatures", "y", "-n", LV, VG, "-l", f"{cfg.thinp_percent}%VG")
    _lvm("lvcreate", "--wipesignatures", "y", "-n", f"{LV}meta", VG, "-l", f"{cfg.thinp_metapercent}%VG")
    _lvm("lvconvert", "-y", "--zero", "n", "-c", "512K", "--thinpool", f"{VG}/{LV}",
         "--poolmetadata", f"{VG}/{LV}meta")
    _write_profile(cfg)
    write_json(config_file, settings)
    if dm.info(POOL) is None:
        _lvm("lvchange", "-ay", f"{VG}/{LV}")
    return pool_name()


def _write_profile(cfg: Config) -> None:
    """Autoextend settings; lvm's monitoring (dmeventd) applies them. Best effort."""
    profile = (f"activation {{\n  thin_pool_autoextend_threshold={cfg.thinp_autoextend_threshold}\n"
               f"  thin_pool_autoextend_percent={cfg.thinp_autoextend_percent}\n}}\n")
    try:
        PROFILE_DIR.mkdir(parents=True, exist_ok=True)
        (PROFILE_DIR / f"{POOL}.profile").write_text(profile)
        _lvm("lvchange", "--metadataprofile", POOL, f"{VG}/{LV}")
    except (OSError, DriverError) as exc:
        log.warning("devicemapper direct-lvm: autoextend profile not applied: %s", exc)


def parse_extend(value: str | int | None, what: str, *, allow_free: bool) -> str | None:
    """An ``--extend`` amount as lvextend's argument: always a growth, never a shrink.

    ``SIZE`` / ``+SIZE`` (Docker units) add that many bytes; ``N%FREE`` (data only)
    adds N percent of the volume group's free space. Checked before anything runs.
    """
    from graphdrivers.options import parse_size
    if value is None or value == "":
        return None
    text = str(value).strip()
    if text.startswith("-"):
        raise InvalidOption(f"cannot shrink the pool's {what} ({text}): shrinking a thin pool "
                            "destroys data; nothing was changed")
    text = text.lstrip("+")
    if text.upper().endswith("%FREE"):
        if not allow_free:
            raise InvalidOption(f"the pool's {what} grows by a size, not {text}")
        number = text[:-5]
        if not number.isdigit() or not 0 < int(number) <= 100:
            raise InvalidOption(f"bad {what} extension {value!r}: want N%FREE with 0 < N <= 100")
        return f"+{int(number)}%FREE"
    try:
        size = parse_size(text)
    except (ValueError, InvalidOption) as exc:
        raise InvalidOption(f"bad {what} extension {value!r}: {exc}") from None
    if size <= 0:
        raise InvalidOption(f"bad {what} extension {value!r}: must grow by more than 0 bytes")
    return f"+{size}b"


def extend(data: str | None, metadata: str | None) -> None:
    """Grow the thin pool LV with lvextend; LVM suspends, reloads and resumes the pool itself.

    ``data`` / ``metadata``: lvextend amounts from :func:`parse_extend`. lvextend is
    all-or-nothing: when the volume group lacks the room it changes nothing.
    """
    from graphdrivers.errors import NoSpace
    steps = []
    if metadata:
        steps.append(("--poolmetadatasize", metadata))
    if data:
        steps.append(("-l" if data.endswith("%FREE") else "-L", data))
    for flag, amount in steps:
        try:
            _lvm("lvextend", flag, amount, f"{VG}/{LV}")
        except DriverError as exc:
            if "insufficient free space" in str(exc).lower():
                raise NoSpace(f"{exc}; add a disk to the volume group {VG} (vgextend) or "
                              "grow its disk (pvresize) first") from None
            raise
