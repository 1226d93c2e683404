"""The home the conformance suite starts examplefs in."""
import contextlib


@contextlib.contextmanager
def home(tmp_path):
    # A driver that needs a filesystem or a pool makes it here, under tmp_path,
    # yields where it is and the driver options to start with, and removes it on
    # exit (calling pytest.skip with the reason when the machine cannot make it).
    yield tmp_path / "examplefs-home", {}
