"""``python -m wbc``: the command-line entry point."""

import sys

from wbc.cli import main

if __name__ == "__main__":
    sys.exit(main())
