"""Refuse files over a size limit (default 1 MB): datasets and weights live outside the repository.

python .ci/check_file_sizes.py [--max-kb 1024] FILE ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-kb", type=int, default=1024)
    parser.add_argument("files", nargs="*", type=Path)
    args = parser.parse_args(argv)
    big = [(f, f.stat().st_size) for f in args.files if f.is_file() and f.stat().st_size > args.max_kb * 1024]
    for path, size in big:
        print(f"{path}: {size / 1024:.0f} kB, over the {args.max_kb} kB limit (keep data outside the repository)")
    return 1 if big else 0


if __name__ == "__main__":
    sys.exit(main())
