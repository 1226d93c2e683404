"""Log output: text and JSON lines from the CLI's servers (each request with its time
at debug, refusals at warning), the level filter, and no driver record on stderr
through Python's last-resort handler when graphdrivers is used as a library."""
from __future__ import annotations

import io
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from graphdrivers import logs
from plugin.plugin_client import Client as PluginClient
from snapshotter.client import Client as SnapClient, Server as SnapServer

L1 = "1" * 64


def test_library_records_do_not_reach_stderr_by_last_resort():
    code = ("import logging, graphdrivers\n"
            "logging.getLogger('graphdrivers.driver').warning('a driver warning')\n"
            "logging.getLogger('graphdrivers.devmapper.pool').error('a pool error')\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    assert result.stderr == ""


@pytest.fixture
def restore_logging():
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, logging.getLogger("graphdrivers").level)
    yield
    root.handlers[:], root.level = saved[0], saved[1]
    logging.getLogger("graphdrivers").setLevel(saved[2])


def test_configure_filters_by_level_and_formats_json(restore_logging):
    out = io.StringIO()
    logs.configure("info", "json", out)
    logger = logging.getLogger("graphdrivers.driver")
    logger.debug("hidden")
    logger.info("shown %d", 1)
    logging.getLogger("urllib3").info("other libraries' info is not shown")
    logging.getLogger("stevedore.named").warning("nor their warnings")
    try:
        raise OSError(5, "Input/output error")
    except OSError:
        logger.exception("failed")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    logging.getLogger("grpc._server").error("but their errors are")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [(e["level"], e["logger"], e["message"]) for e in lines] == [
        ("info", "graphdrivers.driver", "shown 1"), ("error", "graphdrivers.driver", "failed"),
        ("error", "grpc._server", "but their errors are")]
    assert "OSError: [Errno 5]" in lines[1]["exc"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", lines[0]["time"])
    # a second configure replaces the first handler, it does not add one
    logs.configure("warning", "text", out)
    assert sum(isinstance(h, logs._OurHandler) for h in logging.getLogger().handlers) == 1


def _wait_for(path: Path, predicate, timeout: float = 10) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        lines = path.read_text().splitlines() if path.exists() else []
        if predicate(lines) or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def _start_plugin(tmp_path: Path, *flags: str) -> tuple[subprocess.Popen, Path, Path]:
    sock, log = tmp_path / "run" / "p.sock", tmp_path / "plugin.log"
    env = dict(os.environ, GRAPHDRIVERS_PLUGIN_STATE=str(tmp_path / "state"))
    env.pop("GRAPHDRIVERS_DEBUG", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "graphdrivers.cli", "serve",
                                 "--driver", "vfs", "--home", str(tmp_path / "home"),
                                 "--socket", str(sock), *flags], stderr=out, env=env)
    deadline = time.monotonic() + 20
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.02)
    return proc, sock, log


def _stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def test_plugin_logs_json_lines(tmp_path):
    proc, sock, log = _start_plugin(tmp_path, "--log-format", "json", "--log-level", "debug")
    try:
        client = PluginClient(sock)
        client.ok("GraphDriver.Create", {"ID": L1})
        client.error("GraphDriver.Get", {"ID": "missing"})
        lines = _wait_for(log, lambda ls: sum("GraphDriver" in line for line in ls) >= 2)
    finally:
        _stop(proc)
    entries = [json.loads(line) for line in lines]    # every line is a JSON object
    create = [e for e in entries if e["message"].startswith("POST /GraphDriver.Create -> 200 in ")]
    refused = [e for e in entries if e["message"].startswith("POST /GraphDriver.Get -> 500 in ")]
    assert create and create[0]["level"] == "debug", entries
    assert re.search(r" in \d+\.\d ms", create[0]["message"])
    assert refused and refused[0]["level"] == "warning" and "LayerNotFound" in refused[0]["message"]


def test_plugin_logs_text_at_info_by_default(tmp_path):
    proc, sock, log = _start_plugin(tmp_path)
    try:
        client = PluginClient(sock)
        client.ok("GraphDriver.Create", {"ID": L1})
        client.error("GraphDriver.Get", {"ID": "missing"})
        lines = _wait_for(log, lambda ls: any("GraphDriver.Get" in line for line in ls))
    finally:
        _stop(proc)
    text = "\n".join(lines)
    line_re = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) "
                         r"graphdrivers[.\w]*: .+")
    assert all(line_re.fullmatch(line) for line in lines), text
    assert "GraphDriver.Create" not in text          # debug lines are not shown at info
    assert re.search(r"WARNING graphdrivers.servers.docker_plugin: POST /GraphDriver.Get "
                     r"-> 500 in [\d.]+ ms", text), text


def test_snapshotter_logs_calls_and_refusals(tmp_path):
    (tmp_path / "run").mkdir()
    server = SnapServer("vfs", tmp_path / "home", {}, tmp_path / "run" / "s.sock",
                        tmp_path / "snap.log")
    server.args += ["--log-format", "json", "--log-level", "debug"]
    server.start(env={"GRAPHDRIVERS_DEBUG": ""})
    try:
        client = SnapClient(server.socket)
        client.prepare("a")
        client.commit("base", "a")
        client.prepare("b", "base")
        with pytest.raises(Exception):
            client.stat("nosuch")
        with pytest.raises(Exception):
            client.remove("base")        # it has a child: FAILED_PRECONDITION
        client.close()
        lines = _wait_for(server.log, lambda ls: sum('"Remove' in line for line in ls) >= 2)
    finally:
        server.stop()
    entries = [json.loads(line) for line in lines]
    by_message = {e["message"].split(" in ")[0]: e for e in entries}
    assert by_message["Prepare a -> OK"]["level"] == "debug", entries
    assert re.search(r" in \d+\.\d ms$", by_message["Prepare a -> OK"]["message"])
    assert by_message["Stat nosuch -> NOT_FOUND"]["level"] == "debug"
    assert any(e["level"] == "info" and e["message"].startswith("Stat: ") for e in entries)
    assert any(e["level"] == "warning" and e["message"].startswith("Remove: ")
               for e in entries), entries
