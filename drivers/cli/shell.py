"""``graphdrivers completion bash|zsh`` and ``graphdrivers manpage``: both generated
from the argparse definitions, so they cannot drift from the commands.

Completion uses shtab (static scripts: nothing of ours is imported at each Tab, which
matters for a CLI that loads drivers) with two dynamic parts written here: layer ids,
asked from ``graphdrivers layer ls -q`` with the --home/--driver/--config already on the
command line, and driver names, the entry points installed when the script was made.
The man page comes from argparse-manpage.
"""
from __future__ import annotations

import argparse
import sys
from typing import Iterator

# arguments whose values are layer ids: the positional ``id`` and ``--parent``
LAYER_DESTS = ("id", "parent")

BASH_PREAMBLE = r'''
# the --home, --driver and --config already typed, so ids come from that home
_graphdrivers_scope() {
  local i
  for ((i = 1; i < COMP_CWORD; i++)); do
    case ${COMP_WORDS[i]} in
      --home|--driver|-s|--config) printf '%s\n' "${COMP_WORDS[i]}" "${COMP_WORDS[i+1]}" ;;
      --home=*|--driver=*|--config=*) printf '%s\n' "${COMP_WORDS[i]}" ;;
    esac
  done
}
_graphdrivers_layer_ids() {
  local scope
  mapfile -t scope < <(_graphdrivers_scope)
  compgen -W "$(command graphdrivers "${scope[@]}" layer ls -q 2>/dev/null)" -- "$1"
}
_graphdrivers_driver_names() {
  compgen -W "@DRIVERS@" -- "$1"
}
'''

ZSH_PREAMBLE = r'''
_graphdrivers_layer_ids() {
  local -a scope ids
  local i
  for ((i = 2; i < CURRENT; i++)); do
    case ${words[i]} in
      --home|--driver|-s|--config) scope+=("${words[i]}" "${words[i+1]}") ;;
      --home=*|--driver=*|--config=*) scope+=("${words[i]}") ;;
    esac
  done
  ids=(${(f)"$(command graphdrivers "${scope[@]}" layer ls -q 2>/dev/null)"})
  compadd -a ids
}
_graphdrivers_driver_names() {
  compadd @DRIVERS@
}
'''


def add_commands(commands, common: argparse.ArgumentParser) -> None:
    p = commands.add_parser("completion", help="print a shell completion script (bash or zsh)",
                            description="Print a completion script. bash: "
                                        "'source <(graphdrivers completion bash)' or save it "
                                        "under /etc/bash_completion.d/graphdrivers; zsh: save "
                                        "it as _graphdrivers in a directory of $fpath.")
    p.add_argument("shell", choices=("bash", "zsh"))
    p.set_defaults(func=cmd_completion)
    p = commands.add_parser("manpage", help="print the graphdrivers(1) man page (roff)")
    p.set_defaults(func=cmd_manpage)


def _parsers(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):   # aliases share a parser
                yield from _parsers(sub)


def annotate(parser: argparse.ArgumentParser) -> None:
    """Tell shtab what each value is: layer ids, driver names, files, directories."""
    import shtab
    for sub in _parsers(parser):
        layer_command = sub.prog.split()[1:2] == ["layer"]
        for action in sub._actions:
            if action.dest == "driver":
                action.complete = {"bash": "_graphdrivers_driver_names",   # type: ignore[attr-defined]
                                   "zsh": "_graphdrivers_driver_names"}
            elif layer_command and action.dest in LAYER_DESTS and not (
                    action.dest == "id" and sub.prog.endswith(" create")):   # a new id
                action.complete = {"bash": "_graphdrivers_layer_ids",      # type: ignore[attr-defined]
                                   "zsh": "_graphdrivers_layer_ids"}
            elif action.dest == "home":
                action.complete = shtab.DIRECTORY                          # type: ignore[attr-defined]
            elif action.dest in ("config", "output", "file", "socket"):
                action.complete = shtab.FILE                               # type: ignore[attr-defined]


def completion_script(shell: str) -> str:
    import shtab
    from graphdrivers.cli import build_parser
    from graphdrivers.registry import available
    parser = build_parser()
    annotate(parser)
    drivers = " ".join(sorted(available()))
    preamble = (BASH_PREAMBLE if shell == "bash" else ZSH_PREAMBLE).replace("@DRIVERS@", drivers)
    return shtab.complete(parser, shell=shell, preamble={shell: preamble})


def manpage() -> str:
    from argparse_manpage.manpage import Manpage
    from graphdrivers import __version__
    from graphdrivers.cli import build_parser
    return str(Manpage(build_parser(), {
        "project_name": "graphdrivers", "version": __version__,
        "manual_title": "graphdrivers manual",
        "url": "docs/cli.md in the source distribution"}))


def cmd_completion(args: argparse.Namespace) -> int:
    sys.stdout.write(_needs("shtab", completion_script, args.shell))
    return 0


def cmd_manpage(args: argparse.Namespace) -> int:
    sys.stdout.write(_needs("argparse_manpage", manpage))
    return 0


def _needs(module: str, make, *args) -> str:
    try:
        return make(*args)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        from graphdrivers.cli.common import CliError
        package = module.replace("_", "-")
        raise CliError(f"this command needs {package}: pip install {package}") from None
