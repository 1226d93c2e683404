"""``graphdrivers migrate``: copy every layer of one driver into another.

Each layer (base and read-write alike) is created in the target with the source's id,
parent, read-write flag and per-layer options (``Driver.layer_options``), filled through
the drivers' own ``diff``/``apply_diff``, and verified against the source (verify.py)
before the next one starts; parents come first. Nothing here knows a backend: a driver
says what options made a layer, how much room it has (``space_available``) and how it
stores data, through the Driver interface.

Crash story (record.py): the progress record in the target's home names the layers
finished and the one being copied. A migration killed at any point and started again
skips the finished layers, removes the half layer (the one ``current`` names, if the
target has it) and copies it again. The source is only read, never changed, unless
``remove_source`` is asked and every layer was copied and verified; then its layers go,
children first. A target layer with a source layer's id that the record does not explain
is refused before anything is copied.

Layout: every driver keeps its state in ``<home>/<driver name>``, so source and target
may share one home when their drivers differ (vfs in ``H/vfs``, overlay2 in
``H/overlay2``).
"""
from graphdrivers.migrate.plan import LayerPlan, MigrationPlan
from graphdrivers.migrate.run import Observer, copy_layer, migrate, plan
from graphdrivers.migrate.verify import VerificationFailed, verify_layer

__all__ = ["LayerPlan", "MigrationPlan", "Observer", "VerificationFailed", "copy_layer",
           "migrate", "plan", "verify_layer"]
