"""Student edition and grading of the course notebooks, with nbgrader.

    python grading/editions.py student [--out student]
    python grading/editions.py grade SUBMISSIONS [--out outputs/grading/grades.csv]

The notebooks in notebooks/ are the instructor edition: every answer sits in a cell that
carries nbgrader metadata (a *solution* cell), and every automatic check in a locked *grade*
cell (docs/INSTRUCTORS.md, "Exercises and grading"). ``student`` runs ``nbgrader
generate_assignment``, which replaces the code between ``### BEGIN SOLUTION`` and ``### END
SOLUTION`` by ``raise NotImplementedError()`` (grading/nbgrader_config.py) and every written answer by "YOUR ANSWER HERE",
and copies the result to ``student/``. ``grade`` takes a folder with one sub-folder per student
(``SUBMISSIONS/<student>/NN_*.ipynb``), runs ``nbgrader autograde`` (which executes each
notebook with the locked check cells restored from the release) and writes one CSV row per
student and notebook.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
ASSIGNMENT = "wbc"  # one nbgrader assignment holds the 13 notebooks
CONFIG = Path(__file__).with_name("nbgrader_config.py")
CSV_FIELDS = ("student", "notebook", "auto_score", "auto_max", "checks_passed", "checks", "answers_to_read")


def course_notebooks() -> list[Path]:
    """The course's notebooks, in order."""
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def _nbgrader(course: Path, *args: str) -> None:
    """Run one nbgrader command on the course folder ``course``; stop with its output on failure."""
    cmd = [sys.executable, "-m", "nbgrader", *args, f"--CourseDirectory.root={course.resolve()}"]
    # nbgrader calls the `alembic` command of its own environment: put that on the PATH.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    # nbgrader reads nbgrader_config.py from the folder it runs in (it has no option naming the file).
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, env=env, cwd=CONFIG.parent)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed (exit {done.returncode}):\n{done.stdout}{done.stderr}")


def release(course: Path) -> Path:
    """Copy the instructor notebooks (outputs cleared) to ``course``'s source folder and generate
    the student release; return the release folder."""
    source = course / "source" / ASSIGNMENT
    if source.exists():
        shutil.rmtree(source)
    source.mkdir(parents=True)
    for path in course_notebooks():
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                cell.outputs, cell.execution_count = [], None
        nbformat.write(nb, source / path.name)
    _nbgrader(course, "generate_assignment", ASSIGNMENT, "--force", "--create")
    return course / "release" / ASSIGNMENT


def make_student(out: Path) -> list[Path]:
    """Write the student edition to ``out``; return the notebooks written. (It is generated in a
    course folder of its own, so it never touches the gradebook of ``grade``.)"""
    with tempfile.TemporaryDirectory() as course:
        released = release(Path(course))
        out.mkdir(parents=True, exist_ok=True)
        written = []
        for path in sorted(released.glob("*.ipynb")):
            shutil.copyfile(path, out / path.name)
            written.append(out / path.name)
    return written


def _submission_notebooks(folder: Path) -> list[Path]:
    names = {p.name for p in course_notebooks()}
    found = sorted(p for p in folder.glob("*.ipynb") if p.name in names)
    unknown = sorted(p.name for p in folder.glob("*.ipynb") if p.name not in names)
    if unknown:
        raise SystemExit(f"{folder}: not course notebooks: {', '.join(unknown)} (names must match notebooks/)")
    return found


def grade(submissions: Path, out_csv: Path, course: Path) -> list[dict]:
    """Autograde every ``submissions/<student>/NN_*.ipynb`` and write the grades CSV."""
    if not submissions.is_dir():
        raise SystemExit(f"{submissions}: not a folder (expected SUBMISSIONS/<student>/NN_*.ipynb)")
    students = {d.name: _submission_notebooks(d) for d in sorted(submissions.iterdir()) if d.is_dir()}
    students = {name: nbs for name, nbs in students.items() if nbs}
    if not students:
        raise SystemExit(f"{submissions}: no student folder holds a course notebook")
    release(course)  # all notebooks, always: nbgrader refuses to drop one from an assignment with submissions
    for student, notebooks in students.items():
        target = course / "submitted" / student / ASSIGNMENT
        if target.exists():
            shutil.rmtree(target)
        target.mkdir(parents=True)
        for path in notebooks:
            shutil.copyfile(path, target / path.name)
        _nbgrader(course, "autograde", ASSIGNMENT, f"--student={student}", "--force", "--create")
    rows = _scores(course, students)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    with open(out_csv, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    return rows


def _scores(course: Path, students: dict[str, list[Path]]) -> list[dict]:
    """One row per student and notebook, read from nbgrader's gradebook."""
    from nbgrader.api import Gradebook

    rows = []
    with Gradebook(f"sqlite:///{course.resolve() / 'gradebook.db'}") as gb:
        for student, notebooks in students.items():
            submission = gb.find_submission(ASSIGNMENT, student)
            for path in notebooks:
                nb = submission.notebooks[[n.name for n in submission.notebooks].index(path.stem)]
                auto = [g for g in nb.grades if g.cell_type == "code" and g.auto_score is not None]
                rows.append(
                    {
                        "student": student,
                        "notebook": path.stem,
                        "auto_score": sum(g.auto_score for g in auto),
                        "auto_max": sum(g.max_score for g in auto),
                        "checks_passed": sum(g.auto_score == g.max_score for g in auto),
                        "checks": len(auto),
                        "answers_to_read": sum(g.needs_manual_grade for g in nb.grades if g.cell_type == "markdown"),
                    }
                )
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    student = sub.add_parser("student", help="write the student edition (answers removed)")
    student.add_argument("--out", type=Path, default=ROOT / "student")
    grading = sub.add_parser("grade", help="grade SUBMISSIONS/<student>/NN_*.ipynb into a CSV")
    grading.add_argument("submissions", type=Path)
    grading.add_argument("--out", type=Path, default=ROOT / "outputs" / "grading" / "grades.csv")
    grading.add_argument(
        "--course",
        type=Path,
        default=ROOT / "outputs" / "grading" / "course",
        help="nbgrader course folder (gradebook)",
    )
    args = parser.parse_args(argv)
    os.environ.setdefault("WBC_PROFILE", "ci")
    if args.command == "student":
        written = make_student(args.out)
        print(f"student edition: {len(written)} notebooks in {args.out}")
    else:
        rows = grade(args.submissions, args.out, args.course)
        print(f"{len(rows)} notebook(s) of {len({r['student'] for r in rows})} student(s) graded -> {args.out}")


if __name__ == "__main__":
    main()
