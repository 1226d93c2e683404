"""vfs: every layer a plain directory, a child a full copy (reflinked where the filesystem can)."""
from graphdrivers.vfs.driver import VfsDriver

__all__ = ["VfsDriver"]
