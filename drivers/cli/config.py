"""The configuration file and ``graphdrivers config``.

``/etc/graphdrivers/config.toml`` (or ``--config FILE``, or ``$GRAPHDRIVERS_CONFIG``)
holds what an operator would otherwise repeat on every command line::

    home = "/var/lib/graphdrivers"
    driver = "devicemapper"
    storage-opts = ["dm.thinpooldev=/dev/mapper/vg-pool", "dm.basesize=20G"]
    log-level = "info"          # debug, info, warning, error
    log-format = "text"         # text or json

    [serve]                     # graphdrivers serve
    socket = "/run/docker/plugins/graphdrivers.sock"
    name = "graphdrivers"
    metrics-addr = "127.0.0.1:9323"

    [snapshotter]               # graphdrivers snapshotter
    socket = "/run/graphdrivers/snapshotter.sock"
    metrics-addr = "unix:/run/graphdrivers/snapshotter-metrics.sock"

``storage-opts`` is daemon.json's list of ``key=value`` strings, or a table
(``[storage-opts]`` with ``"dm.basesize" = "20G"``). Precedence, highest first:
the command line, the environment (``$GRAPHDRIVERS_HOME``), the file, the built-in
default; storage options merge key by key, the command line's winning. A file
that is not valid TOML, has a key this version does not know, or a value of the
wrong type or form is refused before anything runs, with the file, line and key.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from typing import Any, Callable

from graphdrivers.cli.common import DEFAULT_HOME, CliError, emit_json, print_table

DEFAULT_PATH = "/etc/graphdrivers/config.toml"
LOG_LEVELS = ("debug", "info", "warning", "error")
LOG_FORMATS = ("text", "json")
SERVER_SECTIONS = {"serve": "serve", "snapshotter": "snapshotter"}   # section -> command


class Default(str):
    """An argparse default that remembers it was not typed (the file may replace it)."""


class DefaultList(list):
    """The same for a list default (``--storage-opt``)."""


class ConfigError(CliError):
    """The configuration file is unreadable or invalid."""


@dataclass
class Setting:
    value: Any
    source: str          # "command line", "$GRAPHDRIVERS_HOME", "FILE:LINE", "default"


# -- checking values ---------------------------------------------------------

def _string(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError("must be a non-empty string")
    return value


def _choice(choices: tuple[str, ...]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.lower() not in choices:
            raise ValueError(f"must be one of {', '.join(choices)}")
        return value.lower()
    return check


def _storage_opts(value: Any) -> list[str]:
    if isinstance(value, dict):
        pairs = []
        for key, item in value.items():
            if not isinstance(item, (str, int, bool)):
                raise ValueError(f"option {key!r} must be a string")
            pairs.append(f"{key}={str(item).lower() if isinstance(item, bool) else item}")
        return pairs
    if isinstance(value, list):
        for item in value:
            if not isinstance(item, str) or "=" not in item or not item.partition("=")[0].strip():
                raise ValueError(f"entry {item!r} is not of the form key=value")
        return list(value)
    raise ValueError("must be a list of \"key=value\" strings or a table")


def metrics_address(value: Any) -> str:
    """``HOST:PORT``, ``[V6]:PORT``, ``unix:/path`` or ``/path``."""
    text = _string(value)
    if text.startswith("unix:") or text.startswith("/"):
        if not text.removeprefix("unix:").startswith("/"):
            raise ValueError("a unix socket address needs an absolute path (unix:/run/x.sock)")
        return text
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 < int(port) < 65536 or not host:
        raise ValueError("must be HOST:PORT (127.0.0.1:9323) or unix:/path/to.sock")
    return text


TOP_KEYS: dict[str, Callable[[Any], Any]] = {
    "home": _string, "driver": _string, "storage-opts": _storage_opts,
    "log-level": _choice(LOG_LEVELS), "log-format": _choice(LOG_FORMATS)}
SECTION_KEYS: dict[str, dict[str, Callable[[Any], Any]]] = {
    "serve": {"socket": _string, "name": _string, "metrics-addr": metrics_address},
    "snapshotter": {"socket": _string, "metrics-addr": metrics_address}}


# -- reading the file --------------------------------------------------------

def config_path(args: argparse.Namespace) -> tuple[str, bool]:
    """The file to read, and whether it must exist (named by the user)."""
    given = getattr(args, "config", None)
    if given:
        return given, True
    env = os.environ.get("GRAPHDRIVERS_CONFIG")
    if env:
        return env, True
    return DEFAULT_PATH, False


def load_file(path: str, required: bool) -> dict[str, Setting]:
    """The file's settings as ``{"home": ..., "serve.socket": ...}``; {} without a file."""
    import tomllib
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        if required:
            raise ConfigError(f"configuration file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise ConfigError(f"configuration file {path}: cannot read it: "
                          f"{exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (TOML must be UTF-8)") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(_syntax_message(path, text, exc)) from None
    return _validate(path, text, data)


def _syntax_message(path: str, text: str, exc: Exception) -> str:
    message = str(exc)
    found = re.search(r"\(at line (\d+), column \d+\)", message)
    if not found:
        return f"{path}: invalid TOML: {message}"
    line = int(found.group(1))
    reason = message[:found.start()].strip()
    lines = text.splitlines()
    source = lines[line - 1] if 0 < line <= len(lines) else ""
    key = source.partition("=")[0].strip() if "=" in source else ""
    where = f" (key {key!r})" if key else ""
    return f"{path}:{line}: invalid TOML{where}: {reason}"


def _validate(path: str, text: str, data: dict[str, Any]) -> dict[str, Setting]:
    settings: dict[str, Setting] = {}

    def check(table: str, key: str, value: Any, accepted: dict[str, Callable]) -> None:
        name = f"{table}.{key}" if table else key
        line = find_line(text, table, key)
        where = f"{path}:{line}" if line else path
        spec = accepted.get(key)
        if spec is None:
            raise ConfigError(f"{where}: unknown key {name!r}; known here: "
                              f"{', '.join(sorted(accepted))}")
        try:
            settings[name] = Setting(spec(value), where)
        except ValueError as exc:
            raise ConfigError(f"{where}: key {name!r} {exc} (got {_show(value)})") from None

    for key, value in data.items():
        if key in SECTION_KEYS:
            if not isinstance(value, dict):
                line = find_line(text, "", key)
                raise ConfigError(f"{path}:{line}: key {key!r} must be a table ([{key}])")
            for sub, item in value.items():
                check(key, sub, item, SECTION_KEYS[key])
        else:
            check("", key, value, {**TOP_KEYS, **{s: _string for s in SECTION_KEYS}})
    return settings


def _show(value: Any) -> str:
    kind = {bool: "a boolean", int: "an integer", float: "a number", list: "a list",
            dict: "a table"}.get(type(value))
    return kind or repr(value)


def find_line(text: str, table: str, key: str) -> int | None:
    """The line where ``key`` is set inside ``[table]`` ("" for the top level)."""
    current = ""
    key_re = re.compile(r'\s*(?:"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_.-]+))\s*=')
    for number, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        header = re.match(r"\[\s*([^\]]+?)\s*\]\s*(#.*)?$", stripped)
        if header and not stripped.startswith("[["):
            current = header.group(1).strip('"\'')
            if current == key and table == "":
                return number
            continue
        found = key_re.match(line)
        if not found:
            continue
        name = next(g for g in found.groups() if g is not None)
        if current == table and (name == key or name.split(".")[0] == key):
            return number
        if table == "" and current == "" and name == key:
            return number
    return None


# -- applying it to the command line ------------------------------------------

def _given(value: Any) -> bool:
    if isinstance(value, DefaultList):   # argparse's append copies the (empty) default
        return bool(value)
    return value is not None and not isinstance(value, Default)


def resolve(args: argparse.Namespace) -> dict[str, Setting]:
    """Fill every option not typed on the command line from the environment, the file
    or the default; return each effective value with where it came from."""
    path, required = config_path(args)
    found = load_file(path, required)
    effective: dict[str, Setting] = {}

    def take(dest: str, key: str, env: str | None, default: Any) -> None:
        value = getattr(args, dest, None)
        if _given(value):
            effective[key] = Setting(value, "command line")
        elif env and os.environ.get(env):
            effective[key] = Setting(os.environ[env], f"${env}")
        elif key in found:
            effective[key] = found[key]
        else:
            effective[key] = Setting(default, "default")
        setattr(args, dest, effective[key].value)

    take("home", "home", "GRAPHDRIVERS_HOME", DEFAULT_HOME)
    take("driver", "driver", None, None)
    command = getattr(args, "command", None)
    server = command in SERVER_SECTIONS.values()
    take("log_level", "log-level", None, "info" if server else "warning")
    if effective["log-level"].source == "default" and \
            os.environ.get("GRAPHDRIVERS_DEBUG", "") not in ("", "0"):
        effective["log-level"] = Setting("debug", "$GRAPHDRIVERS_DEBUG")
        args.log_level = "debug"
    take("log_format", "log-format", None, "text")
    _merge_storage_opts(args, found, effective)
    for section, keys in SECTION_KEYS.items():
        for key in keys:
            dest = key.replace("-", "_")
            name = f"{section}.{key}"
            if command == section:
                take(dest, name, None, None)
            elif name in found:
                effective[name] = found[name]
    effective["config"] = Setting(path if (required or found) else None,
                                  "command line" if getattr(args, "config", None) else
                                  "$GRAPHDRIVERS_CONFIG" if os.environ.get("GRAPHDRIVERS_CONFIG")
                                  else "default")
    return effective


def _merge_storage_opts(args: argparse.Namespace, found: dict[str, Setting],
                        effective: dict[str, Setting]) -> None:
    """The file's options, then the command line's: a key given on both takes the flag's."""
    typed = getattr(args, "storage_opt", None)
    typed = list(typed) if _given(typed) else []
    from_file = found.get("storage-opts")
    merged: dict[str, str] = {}
    for pair in (list(from_file.value) if from_file else []) + typed:
        key, _, value = pair.partition("=")
        merged.pop(key.strip(), None)      # the later (the flag's) value, in its place
        merged[key.strip()] = value.strip()
    pairs = [f"{key}={value}" for key, value in merged.items()]
    args.storage_opt = pairs
    sources = []
    if from_file:
        sources.append(from_file.source)
    if typed:
        sources.append("command line")
    effective["storage-opts"] = Setting(pairs, " + ".join(sources) or "default")


# -- graphdrivers config ------------------------------------------------------

def add_commands(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("config", parents=[common],
                            help="show the effective configuration and where each value "
                                 "came from")
    p.set_defaults(func=cmd_config)


def cmd_config(args: argparse.Namespace) -> int:
    effective: dict[str, Setting] = args.effective_config
    if args.json:
        emit_json({key: {"value": s.value, "source": s.source} for key, s in effective.items()})
        return 0
    rows = []
    for key, setting in effective.items():
        value = setting.value
        if isinstance(value, list):
            value = " ".join(value) or "-"
        rows.append([key, "-" if value is None else str(value), setting.source])
    print_table(rows, ["KEY", "VALUE", "SOURCE"])
    return 0
