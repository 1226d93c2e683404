"""The configuration file: precedence (flag > environment > file > default), what
``graphdrivers config`` reports, and every way a file is refused (file, line, key)."""
from __future__ import annotations

import json
import os

import pytest

from graphdrivers.cli import main


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("GRAPHDRIVERS_HOME", raising=False)
    monkeypatch.delenv("GRAPHDRIVERS_CONFIG", raising=False)


def effective(capsys, *argv: str) -> dict:
    assert main([*argv, "config", "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def write(tmp_path, text: str, name: str = "config.toml"):
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def test_file_values_and_their_lines(tmp_path, capsys):
    conf = write(tmp_path, '# comment\nhome = "/srv/h"\ndriver = "vfs"\n'
                           'log-level = "DEBUG"\n\n[serve]\nsocket = "/run/p.sock"\n')
    got = effective(capsys, "--config", str(conf))
    assert got["home"] == {"value": "/srv/h", "source": f"{conf}:2"}
    assert got["driver"] == {"value": "vfs", "source": f"{conf}:3"}
    assert got["log-level"] == {"value": "debug", "source": f"{conf}:4"}
    assert got["log-format"] == {"value": "text", "source": "default"}
    assert got["serve.socket"] == {"value": "/run/p.sock", "source": f"{conf}:7"}
    assert got["config"]["value"] == str(conf)


def test_precedence_flag_then_env_then_file_then_default(tmp_path, capsys, monkeypatch):
    conf = write(tmp_path, 'home = "/from/file"\n')
    monkeypatch.setenv("GRAPHDRIVERS_CONFIG", str(conf))
    assert effective(capsys)["home"] == {"value": "/from/file", "source": f"{conf}:1"}
    assert effective(capsys)["config"]["source"] == "$GRAPHDRIVERS_CONFIG"
    monkeypatch.setenv("GRAPHDRIVERS_HOME", "/from/env")
    assert effective(capsys)["home"] == {"value": "/from/env", "source": "$GRAPHDRIVERS_HOME"}
    assert effective(capsys, "--home", "/from/flag")["home"]["source"] == "command line"
    # after the command too, and equal to the file's value still counts as typed
    got = effective(capsys)  # sanity: env still wins without the flag
    assert got["home"]["value"] == "/from/env"
    monkeypatch.delenv("GRAPHDRIVERS_HOME")
    monkeypatch.delenv("GRAPHDRIVERS_CONFIG")
    assert effective(capsys)["home"] == {"value": "/var/lib/graphdrivers", "source": "default"}


def test_flag_after_the_command_and_explicit_config_beats_env(tmp_path, capsys, monkeypatch):
    env_conf = write(tmp_path, 'driver = "btrfs"\n', "env.toml")
    flag_conf = write(tmp_path, 'driver = "vfs"\n', "flag.toml")
    monkeypatch.setenv("GRAPHDRIVERS_CONFIG", str(env_conf))
    assert main(["config", "--config", str(flag_conf), "--json"]) == 0
    got = json.loads(capsys.readouterr().out)
    assert got["driver"] == {"value": "vfs", "source": f"{flag_conf}:1"}
    assert main(["config", "--driver", "overlay2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["driver"]["source"] == "command line"


@pytest.mark.parametrize("form", ['storage-opts = ["size=1G", "keep=1"]\n',
                                  '[storage-opts]\nsize = "1G"\nkeep = 1\n'])
def test_storage_opts_merge_key_by_key(tmp_path, capsys, form):
    conf = write(tmp_path, form)
    got = effective(capsys, "--config", str(conf), "--storage-opt", "size=2G")
    assert got["storage-opts"]["value"] == ["keep=1", "size=2G"]
    assert got["storage-opts"]["source"] == f"{conf}:1 + command line"
    assert effective(capsys, "--config", str(conf))["storage-opts"]["value"] == ["size=1G", "keep=1"]


def test_the_file_drives_real_commands(tmp_path, capsys):
    """home and driver from the file reach the driver: a layer made with the file is
    found with flags naming the same place."""
    home = tmp_path / "home"
    conf = write(tmp_path, f'home = "{home}"\ndriver = "vfs"\n')
    assert main(["--config", str(conf), "layer", "create", "base"]) == 0
    assert (home / "vfs" / "dir" / "base").is_dir()
    capsys.readouterr()
    assert main(["--home", str(home), "--driver", "vfs", "layer", "ls", "-q"]) == 0
    assert capsys.readouterr().out.split() == ["base"]


def test_server_sections_apply_to_their_command_only(tmp_path, capsys):
    conf = write(tmp_path, '[snapshotter]\nsocket = "/run/s.sock"\n'
                           'metrics-addr = "unix:/run/m.sock"\n')
    got = effective(capsys, "--config", str(conf))
    assert got["snapshotter.socket"]["source"] == f"{conf}:2"
    assert got["snapshotter.metrics-addr"]["value"] == "unix:/run/m.sock"
    assert "serve.socket" not in got


def test_table_output(tmp_path, capsys):
    conf = write(tmp_path, 'driver = "vfs"\n')
    assert main(["--config", str(conf), "config"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["KEY", "VALUE", "SOURCE"]
    assert ["driver", "vfs", f"{conf}:1"] in [line.split() for line in lines]


BAD = [
    ('home = "a\n', ":1: invalid TOML (key 'home')"),
    ('driver = "vfs"\ndriver = "x"\n', ":2: invalid TOML (key 'driver')"),
    ('home = 3\n', ":1: key 'home' must be a non-empty string (got an integer)"),
    ('\n\nfrobnicate = true\n', ":3: unknown key 'frobnicate'"),
    ('[serve]\nsockt = "/a"\n', ":2: unknown key 'serve.sockt'"),
    ('serve = "x"\n', ":1: key 'serve' must be a table"),
    ('log-level = "loud"\n', ":1: key 'log-level' must be one of debug, info, warning, error"),
    ('log-format = "xml"\n', ":1: key 'log-format' must be one of text, json"),
    ('storage-opts = ["nokey"]\n', ":1: key 'storage-opts' entry 'nokey' is not of the form"),
    ('storage-opts = "a=b"\n', ":1: key 'storage-opts' must be a list"),
    ('[storage-opts]\nsize = [1]\n', ":1: key 'storage-opts' option 'size' must be a string"),
    ('[serve]\nmetrics-addr = "localhost"\n', ":2: key 'serve.metrics-addr' must be HOST:PORT"),
    ('[serve]\nmetrics-addr = "unix:rel.sock"\n', ":2: key 'serve.metrics-addr' a unix socket"),
    ('[snapshotter]\nname = "x"\n', ":2: unknown key 'snapshotter.name'"),
    (b'home = "\xff"\n', ":1: not UTF-8"),
]


@pytest.mark.parametrize("text,expected", BAD, ids=range(len(BAD)))
def test_bad_files_are_refused_with_file_line_and_key(tmp_path, capsys, text, expected):
    conf = write(tmp_path, text)
    assert main(["--config", str(conf), "status"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"graphdrivers: error: {conf}{expected}"), err
    assert len(err.splitlines()) == 1


def test_missing_named_file_is_an_error_missing_default_is_not(tmp_path, capsys, monkeypatch):
    assert main(["--config", str(tmp_path / "nope.toml"), "config"]) == 2
    assert "nope.toml does not exist" in capsys.readouterr().err
    monkeypatch.setenv("GRAPHDRIVERS_CONFIG", str(tmp_path / "gone.toml"))
    assert main(["config"]) == 2
    assert "gone.toml does not exist" in capsys.readouterr().err


def test_unreadable_file(tmp_path, capsys):
    assert main(["--config", str(tmp_path), "config"]) == 2
    err = capsys.readouterr().err
    assert f"configuration file {tmp_path}: cannot read it" in err


def test_unreadable_file_for_an_unprivileged_user(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to switch to another user")
    import subprocess
    import sys
    conf = write(tmp_path, 'driver = "vfs"\n')
    conf.chmod(0o600)
    tmp_path.chmod(0o755)
    result = subprocess.run([sys.executable, "-m", "graphdrivers.cli", "--config", str(conf),
                             "config"], capture_output=True, text=True, user=65534,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert result.returncode == 2
    assert "cannot read it: Permission denied" in result.stderr
