"""`python -m graphdrivers.cli`."""
import sys

from graphdrivers.cli import main

sys.exit(main())
