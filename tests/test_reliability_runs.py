"""Reliability of the train / evaluate / predict commands: degenerate input is refused before
TensorFlow starts (``wbc.checks``), with a message that says what to fix.

The commands' ``main`` is called through the parser (``args.func(args)``) rather than
``wbc.cli.main``, which imports TensorFlow first: the checks must need no TensorFlow, and each
test stubs the library call so that reaching it fails the test.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pandas as pd
import pytest

from wbc import checks
from wbc.cli import build_parser
from wbc.errors import WbcError


def write_split(
    folder: Path, rows: dict[str, list[tuple]], classes: str = "a\nb\n", columns: tuple[str, ...] = ("path", "label")
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        pd.DataFrame(rows.get(split, []), columns=list(columns)).to_csv(folder / f"{split}.csv", index=False)
    (folder / "classes.txt").write_text(classes)
    return folder


GOOD = {
    "train": [("/x/a1.jpg", "a"), ("/x/b1.jpg", "b")],
    "val": [("/x/a2.jpg", "a"), ("/x/b2.jpg", "b")],
    "test": [("/x/a3.jpg", "a"), ("/x/b3.jpg", "b")],
}


@pytest.fixture
def no_training(monkeypatch):
    import wbc.train

    def refuse(*args, **kwargs):
        raise AssertionError("the checks should have stopped this before training")

    monkeypatch.setattr(wbc.train, "train_model", refuse)


def run_command(*argv: str):
    args = build_parser().parse_args(list(argv))
    return args.func(args)


def train_args(split: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--split-dir", str(split), "--model", "cnn1", "--out", str(out), *extra]


# ----------------------------------------------------------------------------- split folder checks


def test_good_split_folder_passes(tmp_path):
    assert checks.check_split_folder(write_split(tmp_path / "s", GOOD)) == ["a", "b"]


@pytest.mark.parametrize(
    "case, rows, classes, message",
    [
        (
            "overlap",
            {**GOOD, "test": [("/x/a1.jpg", "a"), ("/x/b3.jpg", "b")]},
            "a\nb\n",
            r"(?s)in more than one split.*/x/a1.jpg \(train and test\)",
        ),
        (
            "one class",
            {k: [r for r in v if r[1] == "a"] for k, v in GOOD.items()},
            "a\n",
            r"1 class\(es\).*at least two",
        ),
        ("blank line", GOOD, "a\n\nb\n", r"empty class name on line\(s\) 2"),
        (
            "empty label",
            {**GOOD, "val": [("/x/a2.jpg", ""), ("/x/b2.jpg", "b")]},
            "a\nb\n",
            r"val.csv: 1 row\(s\) with an empty label.*a2.jpg",
        ),
        (
            "unknown label",
            {**GOOD, "train": [("/x/a1.jpg", "a"), ("/x/c1.jpg", "c")]},
            "a\nb\n",
            r"label\(s\) c not in",
        ),
        ("duplicate class", GOOD, "a\nb\na\n", "listed twice: a"),
    ],
)
def test_degenerate_split_folders_are_refused_naming_the_problem(tmp_path, no_training, case, rows, classes, message):
    split = write_split(tmp_path / "s", rows, classes)
    with pytest.raises(WbcError, match=message):
        checks.check_split_folder(split)
    with pytest.raises(WbcError, match=message):  # and `train` refuses it before training
        run_command(*train_args(split, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


def test_same_content_under_two_names_in_two_splits_is_a_leak(tmp_path):
    cols = ("path", "label", "sha256")
    rows = {
        "train": [("/x/a1.jpg", "a", "s1"), ("/x/b1.jpg", "b", "s2")],
        "val": [("/x/a2.jpg", "a", "s3"), ("/x/b2.jpg", "b", "s4")],
        "test": [("/x/copy_of_a1.jpg", "a", "s1")],
    }
    with pytest.raises(WbcError, match="copy_of_a1.jpg in test: same sha256 as a file in train"):
        checks.check_split_folder(write_split(tmp_path / "s", rows, columns=cols))


# ----------------------------------------------------------------------------- learning rates


@pytest.mark.parametrize("flag", ["--lr", "--fine-tune-lr"])
@pytest.mark.parametrize("value", ["0", "-0.001", "nan", "inf", "-inf"])
def test_non_finite_or_non_positive_learning_rates_are_refused(tmp_path, no_training, flag, value):
    split = write_split(tmp_path / "s", GOOD)
    with pytest.raises(WbcError, match=f"{flag} must be a finite number above 0"):
        run_command(*train_args(split, tmp_path / "run", f"{flag}={value}"))
    assert checks.check_learning_rate("1e-3") == 1e-3


# ----------------------------------------------------------------------------- evaluate / predict


def fake_model(path: Path, members: dict[str, bytes] | None = None) -> Path:
    """A zip shaped like a Keras 3 ``.keras`` archive (enough for ``check_model_file``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in (
            members or {"metadata.json": b"{}", "config.json": b"{}", "model.weights.h5": bytes(range(256)) * 64}
        ).items():
            zf.writestr(name, data)
    return path


def fake_run(run: Path, split_dir: Path | None, classes=("a", "b")) -> Path:
    fake_model(run / "model.keras")
    (run / "config.json").write_text(
        json.dumps({"classes": list(classes), "image_size": 32, "split_dir": str(split_dir) if split_dir else None})
    )
    return run


@pytest.fixture
def no_evaluation(monkeypatch):
    import wbc.evaluate

    def refuse(*args, **kwargs):
        raise AssertionError("the checks should have stopped this before evaluating")

    monkeypatch.setattr(wbc.evaluate, "evaluate_run", refuse)
    monkeypatch.setattr(wbc.evaluate, "open_run", refuse)


@pytest.mark.parametrize(
    "classes, detail",
    [
        ("a\nc\n", "only in the split folder: c; only in the run: b"),
        ("b\na\n", "same names in another order"),
    ],
)
def test_evaluate_refuses_a_split_folder_with_other_classes(tmp_path, no_evaluation, classes, detail):
    own = write_split(tmp_path / "own", GOOD)
    other = write_split(tmp_path / "other", GOOD, classes)
    run = fake_run(tmp_path / "run", own)
    with pytest.raises(WbcError, match=f"(?s)does not match the classes the run was trained on.*{detail}"):
        run_command("evaluate", str(run), "--split-dir", str(other))
    with pytest.raises(WbcError, match=detail):
        checks.check_split_classes(other, run)
    # the run's own split folder, rewritten since training, is caught too
    (own / "classes.txt").write_text(classes)
    with pytest.raises(WbcError, match=detail):
        run_command("evaluate", str(run))
    assert not (run / "evaluation").exists()


def test_matching_classes_reach_the_evaluation(tmp_path, monkeypatch):
    import wbc.evaluate

    own = write_split(tmp_path / "own", GOOD)
    run = fake_run(tmp_path / "run", own)
    reached = {}
    monkeypatch.setattr(wbc.evaluate, "evaluate_run", lambda *a, **k: reached.setdefault("yes", True) and 1 / 0)
    with pytest.raises(ZeroDivisionError):
        run_command("evaluate", str(run))
    assert reached == {"yes": True}


@pytest.mark.parametrize("damage", ["truncated", "garbage", "not keras", "bad crc"])
def test_corrupt_model_file_is_reported_as_corrupt_not_missing(tmp_path, no_evaluation, damage):
    own = write_split(tmp_path / "own", GOOD)
    run = fake_run(tmp_path / "run", own)
    model = run / "model.keras"
    data = model.read_bytes()
    if damage == "truncated":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        model.write_bytes(b"\x00" * 1000)
    elif damage == "not keras":
        fake_model(model, {"hello.txt": b"hi"})
    else:  # flip a byte inside the (stored) weights: the zip directory is fine, the CRC is not
        model.unlink()
        with zipfile.ZipFile(model, "w", zipfile.ZIP_STORED) as zf:
            for name in ("metadata.json", "config.json"):
                zf.writestr(name, b"{}")
            zf.writestr("model.weights.h5", b"W" * 4096)
        raw = bytearray(model.read_bytes())
        raw[raw.index(b"W" * 64) + 10] ^= 0xFF
        model.write_bytes(bytes(raw))
    with pytest.raises(WbcError, match="corrupt or unreadable model file") as err:
        checks.check_model_file(model)
    assert "not found" not in str(err.value).lower()
    for argv in (["evaluate", str(run)], ["predict", str(run), str(tmp_path)]):
        with pytest.raises(WbcError, match="corrupt or unreadable model file"):
            run_command(*argv)


def test_missing_model_file_says_so(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    with pytest.raises(WbcError, match="model file not found"):
        checks.check_model_file(run / "model.keras")
