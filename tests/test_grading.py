"""The graded exercises: their format, the student edition, and the grades of ``make grade``.

The format and the student edition are checked here on every run. Whether the checks pass with
the instructor's solutions is proven by nbval (``make test`` executes every check cell); whether
they fail on the student edition is proven by ``make test-grading``, which grades the untouched
student edition of every notebook (and the instructor edition of two) and then runs
``test_grades`` on the CSV it wrote (``$WBC_GRADES_CSV``).
"""

from __future__ import annotations

import csv
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from grading import editions  # noqa: E402 (grading/ is a folder of scripts, not an installed package)

NOTEBOOKS = editions.course_notebooks()
SOLUTION = re.compile(r"### BEGIN SOLUTION\n(.*?)### END SOLUTION", re.S)


def nbgrader(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def exercise_cells(path: Path) -> list:
    nb = nbformat.read(path, as_version=4)
    start = next(i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Exercises"))
    return nb.cells[start:]


def code_exercises(cells: list) -> list[tuple]:
    """(solution cell, check cell) pairs: a check must follow its solution cell directly."""
    pairs = []
    for cell, after in zip(cells, cells[1:]):
        if cell.cell_type == "code" and nbgrader(cell).get("solution"):
            assert nbgrader(after).get("grade") and after.cell_type == "code", (
                f"{nbgrader(cell)['grade_id']}: the next cell must be its check"
            )
            pairs.append((cell, after))
    return pairs


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_exercise_format(path):
    """At least two write-code exercises with locked checks; 3-7 exercises; only nbgrader-marked answers."""
    cells = exercise_cells(path)
    graded = [c for c in cells if nbgrader(c)]
    ids = [nbgrader(c)["grade_id"] for c in graded]
    assert len(ids) == len(set(ids)), f"{path.name}: repeated grade_id"
    assert all(i.startswith(f"ex{path.name[:2]}_") for i in ids), (
        f"{path.name}: grade_ids must start with ex{path.name[:2]}_"
    )
    pairs = code_exercises(cells)
    assert len(pairs) >= 2, f"{path.name}: {len(pairs)} write-code exercise(s), expected at least 2"
    for solution, check in pairs:
        assert SOLUTION.search(solution.source), f"{nbgrader(solution)['grade_id']}: no SOLUTION markers"
        assert nbgrader(check)["locked"] and nbgrader(check)["points"] > 0
        assert "assert" in check.source, f"{nbgrader(check)['grade_id']}: a check without an assertion"
    statements = [c for c in cells if c.cell_type == "markdown" and re.search(r"\*\*Exercise \d+\*\*", c.source)]
    assert 3 <= len(statements) <= 7, f"{path.name}: {len(statements)} exercises, expected 3-7"
    text = "\n".join(c.source for c in cells)
    assert "<details>" not in text, f"{path.name}: a <details> solution (answers belong in answer cells)"
    answers = [c for c in cells if c.cell_type == "markdown" and "Solution (instructors)" in c.source]
    assert all(nbgrader(c).get("solution") for c in answers), f"{path.name}: an answer cell without nbgrader metadata"


@pytest.fixture(scope="module")
def student_edition(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("student")
    written = editions.make_student(out)
    assert sorted(p.name for p in written) == [p.name for p in NOTEBOOKS]
    return out


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_student_edition_holds_no_solution(path, student_edition):
    teacher = nbformat.read(path, as_version=4).cells
    student = nbformat.read(student_edition / path.name, as_version=4).cells
    assert len(student) == len(teacher), f"{path.name}: the student edition must keep every cell"
    text = "\n".join(c.source for c in student)
    assert "Solution (instructors)" not in text and "BEGIN SOLUTION" not in text
    for mine, theirs in zip(teacher, student):
        meta = nbgrader(mine)
        if meta.get("solution") and mine.cell_type == "code":
            for body in SOLUTION.findall(mine.source):
                lines = [ln.strip() for ln in body.splitlines() if len(ln.strip()) > 12]
                leaked = [ln for ln in lines if ln in theirs.source]
                assert not leaked, f"{meta['grade_id']}: solution lines in the student edition: {leaked}"
            assert re.search(
                r"# YOUR CODE HERE \(then run the check cell below\)\n\s*raise NotImplementedError\(\)", theirs.source
            )
        elif meta.get("solution"):
            assert theirs.source.strip() == "YOUR ANSWER HERE", meta["grade_id"]
        else:
            assert theirs.source == mine.source, f"{path.name}: a cell other than an answer changed"


def test_grade_rejects_bad_submissions(tmp_path):
    with pytest.raises(SystemExit, match="not a folder"):
        editions.grade(tmp_path / "missing", tmp_path / "g.csv", tmp_path / "course")
    (tmp_path / "subs" / "ann").mkdir(parents=True)
    (tmp_path / "subs" / "ann" / "homework.ipynb").write_text("{}")
    with pytest.raises(SystemExit, match=r"ann: not course notebooks: homework\.ipynb"):
        editions.grade(tmp_path / "subs", tmp_path / "g.csv", tmp_path / "course")
    (tmp_path / "subs" / "ann" / "homework.ipynb").unlink()
    with pytest.raises(SystemExit, match="no student folder holds a course notebook"):
        editions.grade(tmp_path / "subs", tmp_path / "g.csv", tmp_path / "course")


def test_grades():
    """The CSV of ``make test-grading``: the instructor edition passes every check it handed in,
    the untouched student edition passes none, in every notebook."""
    path = os.environ.get("WBC_GRADES_CSV")
    if not path:
        pytest.skip("WBC_GRADES_CSV not set: run `make test-grading`")
    rows = list(csv.DictReader(open(path)))
    by_student: dict[str, dict[str, dict]] = {}
    for row in rows:
        by_student.setdefault(row["student"], {})[row["notebook"]] = row
    assert set(by_student["untouched"]) == {p.stem for p in NOTEBOOKS}, "every notebook graded for 'untouched'"
    for name, row in by_student["untouched"].items():
        assert int(row["checks"]) >= 2 and int(row["checks_passed"]) == 0, f"untouched {name}: {row}"
        assert float(row["auto_score"]) == 0
    assert by_student["instructor"], "the instructor edition was graded"
    for name, row in by_student["instructor"].items():
        assert int(row["checks_passed"]) == int(row["checks"]) >= 2, f"instructor {name}: {row}"
        assert float(row["auto_score"]) == float(row["auto_max"]) > 0
        assert int(row["answers_to_read"]) >= 1  # written answers wait for the instructor
