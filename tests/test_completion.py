"""Shell completion and the man page, generated from the argparse definitions: the bash
script is loaded by a real bash and asked for subcommands, driver names and the layer
ids of the --home on the line; the zsh script parses; the man page renders."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import graphdrivers

CLI = [sys.executable, "-m", "graphdrivers.cli"]


def generate(*args: str) -> str:
    result = subprocess.run(CLI + list(args), capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("completion") / "graphdrivers.bash"
    path.write_text(generate("completion", "bash"))
    return path


def complete(script: Path, *words: str) -> list[str]:
    """COMPREPLY of bash for the command line ``words`` (the last one being completed)."""
    import shlex
    line = " ".join(words)
    quoted = " ".join(shlex.quote(w) for w in words)
    code = (f"source {shlex.quote(str(script))}\n"
            f"COMP_WORDS=({quoted})\n"
            f"COMP_CWORD={len(words) - 1}\nCOMP_LINE={shlex.quote(line)}\n"
            f"COMP_POINT={len(line)}\n"
            "_shtab_graphdrivers\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    result = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], capture_output=True,
                            text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line]


def test_bash_loads_it_and_completes_commands(bash_script):
    assert "completion" in complete(bash_script, "graphdrivers", "")
    assert set(complete(bash_script, "graphdrivers", "layer", "")) >= {
        "create", "ls", "mount", "inspect", "usage"}
    assert complete(bash_script, "graphdrivers", "layer", "ins") == ["inspect"]
    assert "--log-format" in complete(bash_script, "graphdrivers", "serve", "--log-f")


def test_bash_completes_driver_names(bash_script):
    names = set(graphdrivers.available())
    assert set(complete(bash_script, "graphdrivers", "--driver", "")) == names
    assert complete(bash_script, "graphdrivers", "status", "--driver", "ov") == ["overlay2"]


def test_bash_completes_the_layer_ids_of_the_home_on_the_line(bash_script, tmp_path):
    home = tmp_path / "home"
    with graphdrivers.load("vfs", home) as driver:
        for layer in ("alpha", "alpine", "beta"):
            driver.create(layer)
    got = complete(bash_script, "graphdrivers", "--home", str(home), "layer", "mount", "al")
    assert got == ["alpha", "alpine"]
    got = complete(bash_script, "graphdrivers", "layer", "inspect", "--home", str(home), "")
    assert sorted(got) == ["alpha", "alpine", "beta"]
    got = complete(bash_script, "graphdrivers", "layer", "create", "--home", str(home),
                   "--parent", "b")
    assert got == ["beta"]
    # another home: its own ids (none), not these
    assert complete(bash_script, "graphdrivers", "--home", str(tmp_path / "other"), "layer",
                    "rm", "") == []


def test_zsh_script_parses():
    script = generate("completion", "zsh")
    assert "#compdef graphdrivers" in script and "_graphdrivers_layer_ids" in script
    zsh = shutil.which("zsh")
    if zsh is None:
        pytest.skip("zsh is not installed (the script is checked by bash tests only)")
    result = subprocess.run([zsh, "-n", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_man_page_covers_every_command(tmp_path):
    page = generate("manpage")
    assert page.startswith(".TH GRAPHDRIVERS \"1\"")
    assert f"graphdrivers {graphdrivers.__version__}" in page
    for command in ("layer", "pool", "config", "serve", "snapshotter", "metrics", "completion"):
        assert f"\\fI\\,{command}\\/\\fR" in page, command
    assert "\\-\\-metrics\\-addr" in page and "\\-\\-log\\-format" in page
    man = shutil.which("man")
    if man:
        (tmp_path / "graphdrivers.1").write_text(page)
        shown = subprocess.run([man, "-l", str(tmp_path / "graphdrivers.1")], capture_output=True,
                               text=True, env=dict(os.environ, MANPAGER="cat", MANWIDTH="100"))
        assert shown.returncode == 0 and "GRAPHDRIVERS(1)" in shown.stdout, shown.stderr
