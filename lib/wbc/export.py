"""Write ``lib/wbc/lessons.py`` from the notebook cells that start with ``#@save``.

The code a lesson teaches (the tf.data chain, the models, the training loop, Grad-CAM) is
written in the notebook that teaches it. Later notebooks and the command line need the same
definitions, so the cells marked ``#@save`` are copied, in notebook order, into one generated
module (the idea of d2l's ``#@save``). The notebooks are the source; ``lessons.py`` is never
edited by hand. ``make lib`` regenerates it; ``python -m wbc.export --check`` (and a test) fails
when the module and the notebooks disagree.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

MARK = re.compile(r"#\s?@save\b")  # "#@save" (d2l's spelling) or "# @save" (as ruff formats it)
PACKAGE_DIR = Path(__file__).resolve().parent
NOTEBOOKS_DIR = PACKAGE_DIR.parents[1] / "notebooks"
TARGET = PACKAGE_DIR / "lessons.py"
_IMPORT = re.compile(r"^(import \S+( as \S+)?|from \S+ import .+)$")
HEADER = '''"""Definitions taught in the notebooks, generated from their ``#@save`` cells.

DO NOT EDIT: edit the notebook cell named above each block, then run ``make lib``.
"""
'''


def saved_cells(notebooks_dir: Path = NOTEBOOKS_DIR) -> list[tuple[str, int, str]]:
    """``(notebook file name, cell index, code)`` of every ``#@save`` cell, in course order."""
    found = []
    for path in sorted(notebooks_dir.glob("[0-9][0-9]_*.ipynb")):
        cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
        for index, cell in enumerate(cells):
            code = "".join(cell["source"])
            mark = MARK.match(code.lstrip())
            if cell["cell_type"] == "code" and mark:
                found.append((path.name, index, code.lstrip()[mark.end() :].strip("\n")))
    return found


def render(notebooks_dir: Path = NOTEBOOKS_DIR) -> str:
    """The text of ``lessons.py``: the imports of all saved cells first, then each cell's code."""
    imports: list[str] = []
    blocks: list[str] = []
    for name, index, code in saved_cells(notebooks_dir):
        lines = code.splitlines()
        while lines and (_IMPORT.match(lines[0]) or not lines[0].strip()):
            line = lines.pop(0)
            if line.strip() and line not in imports:
                imports.append(line)
        body = "\n".join(lines).strip("\n")
        blocks.append(f"# ---- notebooks/{name}, cell {index} " + "-" * max(0, 60 - len(name)) + f"\n\n{body}\n")
    stdlib = sorted(i for i in imports if i.split()[1].split(".")[0] in sys.stdlib_module_names)
    groups = ["\n".join(group) for group in (stdlib, sorted(set(imports) - set(stdlib))) if group]
    return HEADER + "\n" + "\n\n".join(groups) + "\n\n" + "\n\n".join(blocks)


def main(argv: list[str] | None = None) -> int:
    """``python -m wbc.export [--check]``: write lessons.py, or only check that it is current."""
    parser = argparse.ArgumentParser(prog="python -m wbc.export", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if lessons.py differs from the notebooks")
    args = parser.parse_args(argv)
    text = render()
    current = TARGET.read_text(encoding="utf-8") if TARGET.exists() else ""
    if args.check:
        if text != current:
            print(f"{TARGET} is out of date with the #@save cells of {NOTEBOOKS_DIR}: run `make lib`", file=sys.stderr)
            return 1
        print(f"{TARGET.name} matches the notebooks ({len(saved_cells())} cells)")
        return 0
    if text != current:
        TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET} from {len(saved_cells())} #@save cells")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
