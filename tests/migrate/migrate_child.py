"""Child for the kill-and-resume tests: migrate vfs at argv[1] into overlay2 at argv[2]
and print the summary as JSON (a fault point in the environment may SIGKILL it)."""
import json
import sys

import graphdrivers
from graphdrivers import migrate

source = graphdrivers.load("vfs", sys.argv[1])
target = graphdrivers.load("overlay2", sys.argv[2])
try:
    summary = migrate.migrate(source, target, remove_source="--remove" in sys.argv)
finally:
    target.cleanup()
    source.cleanup()
print(json.dumps(summary))
