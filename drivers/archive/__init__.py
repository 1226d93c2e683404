"""Layer tars: export a tree or its changes as an OCI layer tar, and apply one.

The public face of the archive code; the work is split by job:
``archive_export`` (writing), ``archive_apply`` (safe unpacking),
``archive_format`` (tar headers), ``archive_whiteout`` (per-driver whiteouts),
``archive_stream`` (the generator-backed file object).
"""
from graphdrivers.archive.apply import apply_tar
from graphdrivers.archive.export import export_changes, export_tree
from graphdrivers.archive.whiteout import PLAIN, WH_META_PREFIX, WH_OPAQUE, WH_PREFIX, WhiteoutFormat

__all__ = ["apply_tar", "export_changes", "export_tree", "WhiteoutFormat", "PLAIN",
           "WH_PREFIX", "WH_META_PREFIX", "WH_OPAQUE"]
