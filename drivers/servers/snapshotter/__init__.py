"""`graphdrivers snapshotter`: containerd's snapshots API (a proxy snapshotter) over any driver.

``*.proto`` are our own text of containerd's wire format; ``*_pb2*.py`` are generated
from them by ``scripts/gen-protos`` (committed, so an install needs no protoc).
"""
