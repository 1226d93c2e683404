"""examplefs: the vfs driver under a name of its own."""
from graphdrivers.vfs import VfsDriver


class ExampleFsDriver(VfsDriver):
    name = "examplefs"
