"""The committed gRPC modules are what scripts/gen-protos makes from the committed .proto files."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[2] / "drivers" / "servers" / "snapshotter"
GENERATED = ("mount_pb2.py", "mount_pb2.pyi", "snapshots_pb2.py", "snapshots_pb2.pyi",
             "snapshots_pb2_grpc.py")


def test_generated_modules_match_the_protos(tmp_path):
    pytest.importorskip("grpc_tools")
    stage = tmp_path / "graphdrivers" / "servers" / "snapshotter"
    stage.mkdir(parents=True)
    for proto in SOURCE.glob("*.proto"):
        shutil.copy(proto, stage)
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", ".", "--python_out=.",
                    "--pyi_out=.", "--grpc_python_out=.",
                    *(str(p.relative_to(tmp_path)) for p in sorted(stage.glob("*.proto")))],
                   cwd=tmp_path, check=True)
    for name in GENERATED:
        assert (stage / name).read_text() == (SOURCE / name).read_text(), \
            f"{name} is stale: run scripts/gen-protos"
