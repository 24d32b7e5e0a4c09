"""Mutation testing (mutmut 3) of the modules whose mistakes would corrupt results silently.

    python .ci/mutate.py [--jobs N] [--keep] [--only MODULE ...] [--list-survivors]   (``make mutate``)

mutmut only puts ``./``, ``src/`` or ``source/`` of the mutated copy on ``sys.path`` and names the
mutants after the file path, so the ``lib/`` layout is staged under ``outputs/mutmut/`` as
``src/wbc`` (plus ``tests/`` and ``pyproject.toml`` with a ``[tool.mutmut]`` section) and mutmut
runs there. Only the functions in ``TARGETS`` are mutated (the silent-corruption core: label map
and merge, the whole of ``wbc.split`` (grouping, hashing, allocation, the leakage audit, the split
folders), metrics, the image header / pixel-limit / min-size checks and sniffing, the black-band
check); each mutant runs only the tests of ``TESTS`` that call its function (``--only MODULE``:
those modules alone, for iterating). Prints killed / survived per module and the score,
killed / (killed + survived + no tests); timeouts count as killed. Survivors are listed in
``outputs/mutmut/survivors.txt`` (``mutmut show NAME`` inside ``outputs/mutmut`` shows the diff).
``--keep`` reuses the previous run's results for unchanged functions (quicker, for iterating); the
default starts afresh.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGE = ROOT / "outputs" / "mutmut"

#: module -> functions mutated (None: every function of the module).
TARGETS: dict[str, list[str] | None] = {
    "labels": None,
    "merge": None,
    "split": None,
    "metrics": None,
    "images": [
        "sniff_format",
        "header_size",
        "check_pixel_limit",
        "check_min_size",
        "_jpeg_is_complete",
        "decode_raw",
        "read_raw",
    ],
    "preprocess": ["detect_black_band", "describe_black_band"],
}

#: The fast test files (or single tests) that exercise those modules.
TESTS = [
    "tests/test_merge.py",
    "tests/test_split.py",
    "tests/test_split_audit.py",
    "tests/test_experiments.py::test_build_external_split",
    "tests/test_experiments.py::test_build_external_split_needs_two_shared_classes",
    "tests/test_metrics.py",
    "tests/test_preprocess.py",
    "tests/test_reliability_data.py",
    "tests/test_readers.py",
    "tests/test_bad_input.py",
    "tests/test_mutation_killers.py",
]
#: Left out: the demo-duplicates scan (25 s) and the end-to-end CLI runs (2-4 s each with the demo
#: data they generate); each would run for every mutant of wbc.split. test_split_audit.py calls the
#: same functions directly on a few tiny images instead.
DESELECT = [
    "tests/test_split.py::test_demo_data_has_only_the_planted_duplicate_groups",
    "tests/test_split.py::test_cli_preprocess_then_split_on_demo_data",
    "tests/test_split.py::test_cli_split_writes_byte_identical_files_for_the_same_seed",
]

#: A pytest plugin (``-p``) for the mutmut runs. tqdm guards its bars with a multiprocessing lock,
#: a semaphore that mutmut's main process creates (the first test that hashes images) and that
#: every forked worker then shares: a worker killed while holding it blocks all the others, and
#: each then runs into its timeout. One worker needs no more than tqdm's thread lock.
PLUGIN = (
    '"""Written by .ci/mutate.py (see PLUGIN there): tqdm without its multiprocessing lock."""\n\n'
    "from tqdm.std import TqdmDefaultWriteLock\n\n"
    "TqdmDefaultWriteLock.mp_lock = None\n"
)

KILLED = {1, 3, 36, 24, -24, 152, 255}  # test failure, pytest internal error, timeouts
SURVIVED = {0}
NO_TESTS = {5, 33}


def _toml_list(items: list[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


def stage() -> None:
    """Copy lib/wbc -> src/wbc, tests/ and pyproject.toml (+ [tool.mutmut]) into STAGE."""
    STAGE.mkdir(parents=True, exist_ok=True)
    for name in ("src", "tests"):
        shutil.rmtree(STAGE / name, ignore_errors=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(ROOT / "lib" / "wbc", STAGE / "src" / "wbc", ignore=ignore)
    shutil.copytree(ROOT / "tests", STAGE / "tests", ignore=ignore)
    config = (ROOT / "pyproject.toml").read_text()
    config += (
        "\n[tool.mutmut]\n"
        'source_paths = ["src"]\n'
        f"only_mutate = {_toml_list([f'src/wbc/{m}.py' for m in TARGETS])}\n"
        f"pytest_add_cli_args = {_toml_list(['-p', 'no:cacheprovider', '-p', 'no:randomly', '-p', 'mutmut_no_mp_lock'] + [f'--deselect={d}' for d in DESELECT])}\n"
        f"pytest_add_cli_args_test_selection = {_toml_list([t for t in TESTS if (ROOT / t.split('::')[0]).is_file()])}\n"
        "use_git_change_detection = false\n"
    )
    (STAGE / "pyproject.toml").write_text(config)
    (STAGE / "plugins").mkdir(exist_ok=True)
    (STAGE / "plugins" / "mutmut_no_mp_lock.py").write_text(PLUGIN)


def patterns() -> list[str]:
    out = []
    for module, functions in TARGETS.items():
        if functions is None:
            out.append(f"wbc.{module}.*")
        else:
            out += [f"wbc.{module}.x_{f}__mutmut_*" for f in functions]
    return out


def selected(name: str) -> bool:
    import fnmatch

    return any(fnmatch.fnmatchcase(name, p) for p in patterns())


def results() -> dict[str, dict[str, int]]:
    """mutant name -> exit code, per module, from mutmut's meta files."""
    out: dict[str, dict[str, int]] = {}
    for module in TARGETS:
        meta = STAGE / "mutants" / "src" / "wbc" / f"{module}.py.meta"
        if not meta.is_file():
            out[module] = {}
            continue
        codes = json.loads(meta.read_text())["exit_code_by_key"]
        out[module] = {k: v for k, v in codes.items() if selected(k)}
    return out


def report(by_module: dict[str, dict[str, int]]) -> list[str]:
    survivors = []
    print(f"\n{'module':<12}{'mutants':>8}{'killed':>8}{'survived':>9}{'no tests':>9}{'other':>7}{'score':>8}")
    total = Counter()
    for module, codes in by_module.items():
        c = Counter()
        for name, code in sorted(codes.items()):
            kind = (
                "killed"
                if code in KILLED
                else "survived"
                if code in SURVIVED
                else "no_tests"
                if code in NO_TESTS
                else "other"
            )
            c[kind] += 1
            if kind in ("survived", "no_tests", "other"):
                survivors.append(f"{name}\t{kind} (exit {code})")
        counted = c["killed"] + c["survived"] + c["no_tests"]
        score = f"{100 * c['killed'] / counted:.1f}%" if counted else "-"
        print(
            f"wbc.{module:<8}{sum(c.values()):>8}{c['killed']:>8}{c['survived']:>9}{c['no_tests']:>9}{c['other']:>7}{score:>8}"
        )
        total += c
    counted = total["killed"] + total["survived"] + total["no_tests"]
    if counted:
        print(
            f"{'all':<12}{sum(total.values()):>8}{total['killed']:>8}{total['survived']:>9}"
            f"{total['no_tests']:>9}{total['other']:>7}{100 * total['killed'] / counted:>7.1f}%"
        )
    return survivors


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="mutants tested at once")
    parser.add_argument("--keep", action="store_true", help="reuse the previous run's results (mutants/ kept)")
    parser.add_argument("--report-only", action="store_true", help="print the scores of the last run, run nothing")
    parser.add_argument("--only", nargs="+", choices=list(TARGETS), help="mutate these modules only (iterating)")
    parser.add_argument("--list-survivors", action="store_true", help="print the surviving mutants' names")
    args = parser.parse_args(argv)
    if args.only:
        for module in set(TARGETS) - set(args.only):
            del TARGETS[module]
    mutmut = Path(sys.executable).with_name("mutmut")
    if not args.report_only:
        if not args.keep:
            shutil.rmtree(STAGE, ignore_errors=True)
        stage()
        start = time.monotonic()
        env = {**os.environ, "WBC_REAL_SAMPLE": "", "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONDONTWRITEBYTECODE": "1"}
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(STAGE / "plugins"), os.environ.get("PYTHONPATH")]))
        rc = subprocess.call([str(mutmut), "run", "--max-children", str(args.jobs), *patterns()], cwd=STAGE, env=env)
        print(f"mutmut run: exit {rc}, {time.monotonic() - start:.0f} s")
        if rc != 0:
            return rc
    survivors = report(results())
    (STAGE / "survivors.txt").write_text("".join(f"{s}\n" for s in survivors))
    print(f"{len(survivors)} surviving mutant(s) listed in {STAGE.relative_to(ROOT)}/survivors.txt")
    if args.list_survivors:
        print("\n".join(survivors))
    return 0


if __name__ == "__main__":
    sys.exit(main())
