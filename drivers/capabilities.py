"""Optional capabilities a driver declares by inheriting them; callers ask by type.

The CLI's ``pool`` commands work on any driver that is a ``PoolAdmin``, so the
framework never names the driver that has one.
"""
from __future__ import annotations

import abc
from typing import Any, Callable, Mapping


class PoolAdmin(abc.ABC):
    """Layers live in one pool an operator watches and grows online."""

    # storage options a resize takes, mapped to resize_pool()'s keyword (sizes in bytes)
    RESIZE_OPTIONS: Mapping[str, str] = {}

    @abc.abstractmethod
    def pool_status(self) -> dict[str, Any]:
        """Used and total space, mode and warnings, as plain JSON-able values."""

    @abc.abstractmethod
    def resize_pool(self, *, force: bool = False, progress: Callable[[str], None] | None = None,
                    extend: str | None = None, extend_metadata: str | None = None,
                    **sizes: int | None) -> dict[str, Any]:
        """Grow the pool online (shrinking is refused); returns pool_status() after it."""
