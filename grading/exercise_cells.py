"""Build a notebook's graded "## Exercises" section (for authors; see docs/INSTRUCTORS.md).

    from grading.exercise_cells import question, answer, solution, check, replace_exercises
    replace_exercises("notebooks/01_setup_and_gpu_check.ipynb", [
        question("## Exercises\\n\\n**Exercise 1** *(easy, write code)*: ..."),
        solution("ex01_1_code", "def f(x):\\n    ### BEGIN SOLUTION\\n    return x\\n    ### END SOLUTION"),
        check("ex01_1_check", "assert f(1) == 1\\nprint('Exercise 1: correct')"),
        answer("ex01_1_answer", "What the student should have written."),
    ])

The cells carry nbgrader's metadata (schema 3): a *solution* code cell keeps what is outside
``### BEGIN SOLUTION`` / ``### END SOLUTION`` in the student edition; an *answer* cell is a
written answer, replaced by "YOUR ANSWER HERE" and read by the instructor; a *check* cell is
locked and graded: it passes when it runs without an error.
"""

from __future__ import annotations

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell

HEADING = "## Exercises"


def _meta(grade_id: str, *, solution: bool, grade: bool, locked: bool, points: int | None = None) -> dict:
    meta = {
        "grade": grade,
        "grade_id": grade_id,
        "locked": locked,
        "schema_version": 3,
        "solution": solution,
        "task": False,
    }
    if points is not None:
        meta["points"] = points
    return {"nbgrader": meta}


def question(text: str) -> nbformat.NotebookNode:
    """An exercise's statement (stays in the student edition)."""
    return new_markdown_cell(text)


def answer(grade_id: str, text: str, points: int = 1) -> nbformat.NotebookNode:
    """A written answer, graded by the instructor; the student edition shows "YOUR ANSWER HERE"."""
    return new_markdown_cell(
        "*Solution (instructors).* " + text,
        metadata=_meta(grade_id, solution=True, grade=True, locked=False, points=points),
    )


def solution(grade_id: str, code: str) -> nbformat.NotebookNode:
    """Code the student writes: the part between the SOLUTION markers is removed in the student edition."""
    if "### BEGIN SOLUTION" not in code or "### END SOLUTION" not in code:
        raise ValueError(f"{grade_id}: a solution cell needs ### BEGIN SOLUTION and ### END SOLUTION")
    return new_code_cell(code, metadata=_meta(grade_id, solution=True, grade=False, locked=False))


def check(grade_id: str, code: str, points: int = 2) -> nbformat.NotebookNode:
    """A locked, automatically graded check: it passes when it runs without an error."""
    return new_code_cell(code, metadata=_meta(grade_id, solution=False, grade=True, locked=True, points=points))


def replace_exercises(path: str | Path, cells: list[nbformat.NotebookNode]) -> None:
    """Replace everything from the notebook's "## Exercises" heading to its end by ``cells``.

    The heading may open a cell or sit inside one (after the summary); text before it is kept.
    ``cells[0]`` must start with the heading.
    """
    if not cells or not cells[0].source.startswith(HEADING):
        raise ValueError(f"the first new cell must start with {HEADING!r}")
    nb = nbformat.read(path, as_version=4)
    old_ids = {c.metadata["nbgrader"]["grade_id"]: c.id for c in nb.cells if "nbgrader" in c.metadata}
    for cell in cells:  # a rewritten exercise keeps its cells' ids: smaller diffs
        grade_id = cell.metadata.get("nbgrader", {}).get("grade_id")
        if grade_id in old_ids:
            cell.id = old_ids[grade_id]
    for index, cell in enumerate(nb.cells):
        if cell.cell_type == "markdown" and HEADING in cell.source:
            before = cell.source.split(HEADING, 1)[0].rstrip()
            nb.cells = nb.cells[:index] + ([new_markdown_cell(before)] if before else []) + list(cells)
            if before:
                nb.cells[index].id = cell.id  # the summary keeps its cell id
            break
    else:
        raise ValueError(f"{path}: no {HEADING!r} heading")
    nbformat.validate(nb)
    nbformat.write(nb, path)
