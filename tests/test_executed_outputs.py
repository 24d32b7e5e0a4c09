"""What a student sees: the stored outputs of executed notebooks are free of noise.

``make test`` runs the notebooks under nbval in the ``ci`` profile (and 01-08 on the real sample);
``notebooks/conftest.py`` writes what each cell printed into ``outputs/nbval-ci`` (the folder
``$WBC_EXECUTED_NOTEBOOKS`` names), and this file then fails on a Python warning, a traceback, a
``WARNING:tensorflow`` line, a retracing message, progress-bar residue, or more than
``MAX_LOG_LINES`` lines of plain log in one cell. It scans ``make run``'s executed notebooks the same
way: ``WBC_EXECUTED_NOTEBOOKS=outputs/notebooks-demo``. Without executed notebooks (a
plain ``pytest tests``) the scan is skipped; the checker itself is always tested.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

MAX_LOG_LINES = 20
PATTERNS = {
    "Python warning": re.compile(r"^\S*\.py:\d+: \w*Warning: |^\w*Warning: ", re.M),
    "traceback": re.compile(r"Traceback \(most recent call last\)"),
    "TensorFlow warning": re.compile(r"WARNING:tensorflow|^W\d{4} ", re.M),
    "retracing": re.compile(r"retracing", re.I),
    "progress-bar residue": re.compile(r"\d+%\|[^|\n]*\|\s*\d+/\d+|\r(?!\n)"),
}


def cell_text(output: dict) -> str:
    """The text a student reads in one output: streams, plain-text results, errors."""
    if output.get("output_type") == "stream":
        text = output.get("text", "")
        return text if isinstance(text, str) else "".join(text)
    if output.get("output_type") == "error":
        return "Traceback (most recent call last)\n" + output.get("ename", "") + ": " + output.get("evalue", "")
    return ""


def problems(nb: dict) -> list[str]:
    """``"cell N: what"`` for every output that a student should not have to read past."""
    found = []
    code_cells = [c for c in nb.get("cells", []) if c.get("cell_type") == "code"]
    for index, cell in enumerate(code_cells):
        text = "".join(cell_text(o) for o in cell.get("outputs", []))
        for what, pattern in PATTERNS.items():
            match = pattern.search(text)
            if match:
                line = text[max(0, match.start() - 40) : match.end() + 60].replace("\n", " | ")
                found.append(f"code cell {index}: {what}: ...{line}...")
        streamed = sum(
            len("".join(o.get("text", "")).splitlines())
            for o in cell.get("outputs", [])
            if o.get("output_type") == "stream"
        )
        if streamed > MAX_LOG_LINES:
            found.append(f"code cell {index}: {streamed} lines of log (at most {MAX_LOG_LINES})")
    return found


def _executed() -> list[Path]:
    folder = os.environ.get("WBC_EXECUTED_NOTEBOOKS")
    return sorted(Path(folder).glob("[0-9][0-9]_*.ipynb")) if folder else []


@pytest.mark.parametrize("path", _executed() or [None], ids=lambda p: p.stem if p else "none")
def test_executed_notebooks_are_free_of_noise(path):
    if path is None:
        pytest.skip("WBC_EXECUTED_NOTEBOOKS names no executed notebooks (make test sets it)")
    assert problems(json.loads(path.read_text(encoding="utf-8"))) == []


def _notebook(*outputs: dict) -> dict:
    return {"cells": [{"cell_type": "code", "source": "x", "outputs": list(outputs)}]}


def _stream(text: str) -> dict:
    return {"output_type": "stream", "name": "stdout", "text": text}


def test_the_scan_finds_each_kind_of_noise():
    planted = {
        "Python warning": "/x/keras/src/trainer.py:74: UserWarning: `shuffle=True` was passed\n",
        "TensorFlow warning": "WARNING:tensorflow:5 out of the last 5 calls triggered tf.function retracing\n",
        "progress-bar residue": " 84%|########4 | 16/19 [00:01<00:00, 12.1it/s]\n",
    }
    for what, text in planted.items():
        assert any(what in p for p in problems(_notebook(_stream(text)))), what
    error = {"output_type": "error", "ename": "ValueError", "evalue": "bad", "traceback": []}
    assert any("traceback" in p for p in problems(_notebook(error)))
    assert any("lines of log" in p for p in problems(_notebook(_stream("line\n" * 21))))


def test_clean_output_passes():
    assert (
        problems(
            _notebook(
                _stream("accuracy 0.91 (95 % CI 0.85-0.96)\n" * 5),
                {"output_type": "display_data", "data": {"image/png": "..."}},
            )
        )
        == []
    )


def test_a_warning_planted_in_a_notebook_fails_the_scan_of_its_nbval_run(tmp_path):
    """The whole path of ``make test``: nbval runs a notebook, notebooks/conftest.py keeps its outputs,
    and the scan finds the warning one cell printed (and nothing in the clean cell)."""
    import shutil
    import subprocess
    import sys

    import nbformat

    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(Path(__file__).parents[1] / "notebooks" / "conftest.py", folder / "conftest.py")
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("print('accuracy 0.91')"),
        nbformat.v4.new_code_cell("import warnings\nwarnings.warn('planted for the test', UserWarning)"),
    ]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "01_planted.ipynb")
    kept = tmp_path / "executed"
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env", "."],
        cwd=folder,
        env=os.environ | {"WBC_EXECUTED_NOTEBOOKS": str(kept)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr  # nbval itself passes: a warning is no error
    found = problems(json.loads((kept / "01_planted.ipynb").read_text(encoding="utf-8")))
    assert len(found) == 1 and found[0].startswith("code cell 1: Python warning"), found
