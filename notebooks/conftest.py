"""Under nbval (``make test-notebooks``): keep what each notebook printed, for the output scan.

When ``$WBC_EXECUTED_NOTEBOOKS`` names a folder, every notebook nbval ran is written there with the
outputs its cells produced in that run, so ``tests/test_executed_outputs.py`` scans exactly what the
``ci`` run printed, without executing the notebooks a second time.
"""

from __future__ import annotations

import os
from pathlib import Path

import nbformat


def pytest_runtest_makereport(item, call):
    """After a cell ran, store its outputs in the notebook nbval collected (nbval keeps them apart)."""
    outputs = getattr(item, "test_outputs", None)
    if call.when == "call" and outputs is not None:
        item.cell.outputs = outputs


def pytest_sessionfinish(session):
    folder = os.environ.get("WBC_EXECUTED_NOTEBOOKS")
    if not folder:
        return
    notebooks = {item.parent.path: item.parent.nb for item in session.items if hasattr(item.parent, "nb")}
    Path(folder).mkdir(parents=True, exist_ok=True)
    for path, nb in notebooks.items():
        nbformat.write(nb, Path(folder) / Path(path).name)
