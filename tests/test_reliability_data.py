"""Reliability of the data stages: truthful settings records, pixel limits, folders replaced as a
unit, empty labels, file names that are not UTF-8, file permissions."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import wbc.preprocess as pp
from wbc.cli import main as cli_main
from wbc.errors import WbcError
from wbc.fileio import write_csv_atomic, write_text_atomic
from wbc.preprocess import preprocess_manifest, read_image
from wbc.split import split_manifest, write_split_folder

SPLIT_FILES = ("train.csv", "val.csv", "test.csv", "audit.csv", "classes.txt")


def noise(path: Path, h: int = 48, w: int = 48, seed: int = 0) -> Path:
    """A random-noise image: no two of them are near duplicates."""
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))
    return path


def manifest_of(paths: list[Path], labels: list[str] | None = None) -> pd.DataFrame:
    return pd.DataFrame({"path": [str(p) for p in paths], "source": "PBC", "label": labels or ["cells"] * len(paths)})


@pytest.fixture
def raw(tmp_path) -> list[Path]:
    return [noise(tmp_path / "raw" / f"cell_{i}.png", seed=i) for i in range(4)]


# ----------------------------------------------------------------------------- settings record


def test_other_settings_into_a_filled_folder_are_refused_unless_overwrite(raw, tmp_path, capsys):
    csv = tmp_path / "manifest.csv"
    manifest_of(raw).to_csv(csv, index=False)
    out = tmp_path / "out"
    base = ["preprocess", str(csv), "--out", str(out), "--jobs", "1", "--no-progress"]
    assert cli_main(base + ["--size", "32"]) == 0
    for other in (
        ["--size", "24"],
        ["--size", "32", "--mode", "pad"],
        ["--size", "32", "--colour", "clahe"],
        ["--size", "32", "--quality", "80"],
        ["--size", "32", "--keep-black-band"],
    ):
        capsys.readouterr()
        assert cli_main(base + other) == 2, other
        err = capsys.readouterr().err
        assert "other settings" in err and "--overwrite" in err
    assert json.loads((out / "preprocess.json").read_text())["size"] == 32  # the record still tells the truth
    assert all(read_image(p).shape == (32, 32, 3) for p in pd.read_csv(out / "manifest.csv")["path"])

    assert cli_main(base + ["--size", "24", "--mode", "pad", "--overwrite"]) == 0
    recorded = json.loads((out / "preprocess.json").read_text())
    assert recorded["size"] == 24 and recorded["mode"] == "pad"
    images = sorted(out.glob("images/*/*.jpg"))
    assert len(images) == len(raw) and all(read_image(p).shape == (24, 24, 3) for p in images)
    assert cli_main(base + ["--size", "24", "--mode", "pad"]) == 0  # same settings: resumes, no flag needed


def test_settings_record_is_written_only_when_the_images_are_complete(raw, tmp_path, monkeypatch):
    out = tmp_path / "out"
    real = pp._process_one
    calls = {"n": 0}

    def interrupt_after_two(task, settings):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real(task, settings)

    monkeypatch.setattr(pp, "_process_one", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        preprocess_manifest(manifest_of(raw), out, 32, jobs=1, progress=False)
    assert any(out.glob("images/*/*.jpg")) and not (out / "preprocess.json").exists()

    monkeypatch.setattr(pp, "_process_one", real)
    preprocess_manifest(manifest_of(raw), out, 32, jobs=1, progress=False)
    assert json.loads((out / "preprocess.json").read_text())["size"] == 32

    calls["n"] = 0  # an interrupted --overwrite with other settings leaves no stale record either
    monkeypatch.setattr(pp, "_process_one", interrupt_after_two)
    with pytest.raises(KeyboardInterrupt):
        preprocess_manifest(manifest_of(raw), out, 20, jobs=1, progress=False, overwrite=True)
    assert not (out / "preprocess.json").exists()
    monkeypatch.setattr(pp, "_process_one", real)
    with pytest.raises(WbcError, match="other settings"):  # the journal remembers the run's settings
        preprocess_manifest(manifest_of(raw), out, 32, jobs=1, progress=False)
    processed, _ = preprocess_manifest(manifest_of(raw), out, 20, jobs=1, progress=False)
    assert processed.attrs["counts"]["skipped"] == 2
    assert json.loads((out / "preprocess.json").read_text())["size"] == 20


def test_start_keeps_part_files_of_live_writers_and_removes_dead_ones(raw, tmp_path):
    out = tmp_path / "out"
    folder = out / "images" / "cells"
    folder.mkdir(parents=True)
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    try:
        live_part = folder / f".other.{sleeper.pid}.part.jpg"
        dead_part = folder / f".other.{int(dead.stdout)}.part.jpg"
        live_part.write_bytes(b"half")
        dead_part.write_bytes(b"half")
        preprocess_manifest(manifest_of(raw), out, 32, jobs=1, progress=False)
        assert live_part.exists() and not dead_part.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


# ----------------------------------------------------------------------------- pixel limits


def giant_png(width: int, height: int) -> bytes:
    """A valid 1-bit grayscale PNG of width x height: tens of kilobytes on disk, gigabytes decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return len(data).to_bytes(4, "big") + kind + data + zlib.crc32(kind + data).to_bytes(4, "big")

    row = b"\x00" + bytes((width + 7) // 8)
    comp = zlib.compressobj(9)
    body = b"".join(comp.compress(row) for _ in range(height)) + comp.flush()
    ihdr = width.to_bytes(4, "big") + height.to_bytes(4, "big") + bytes([1, 0, 0, 0, 0])
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def test_huge_image_is_quarantined_from_its_header_without_decoding(raw, tmp_path, monkeypatch):
    bomb = tmp_path / "raw" / "bomb.png"
    bomb.write_bytes(giant_png(20000, 20000))
    assert bomb.stat().st_size < 2_000_000
    real_decode = cv2.imdecode

    def guarded(buf, flags):
        assert len(buf) != bomb.stat().st_size, "the 20000x20000 PNG was handed to the decoder"
        return real_decode(buf, flags)

    monkeypatch.setattr(pp.cv2, "imdecode", guarded)
    processed, quarantine = preprocess_manifest(manifest_of([*raw, bomb]), tmp_path / "out", 32, jobs=1, progress=False)
    assert len(processed) == len(raw)
    reason = quarantine.set_index("path").at[str(bomb), "reason"]
    assert reason.startswith("too large: 20000x20000 px") and "--max-pixels" in reason
    with pytest.raises(WbcError, match="too large"):  # read_image (split, predict) refuses it too
        read_image(bomb)


def test_pixel_limit_and_minimum_size_are_settable(tmp_path):
    big, small = noise(tmp_path / "raw" / "big.png", 100, 100), noise(tmp_path / "raw" / "small.png", 8, 12, seed=1)
    processed, quarantine = preprocess_manifest(
        manifest_of([big, small]), tmp_path / "a", 32, jobs=1, progress=False, max_pixels=5000
    )
    reasons = quarantine.set_index("path")["reason"]
    assert reasons[str(big)].startswith("too large: 100x100 px")
    assert reasons[str(small)].startswith("too small: 12x8 px") and "not upscaled" in reasons[str(small)]
    assert processed.empty
    processed, quarantine = preprocess_manifest(
        manifest_of([big, small]), tmp_path / "b", 32, jobs=1, progress=False, min_size=8
    )
    assert len(processed) == 2 and quarantine.empty
    # a re-run with a stricter limit quarantines a finished output instead of skipping it
    processed, quarantine = preprocess_manifest(
        manifest_of([big, small]), tmp_path / "b", 32, jobs=1, progress=False, min_size=16
    )
    assert processed["raw_path"].tolist() == [str(big)] and quarantine["path"].tolist() == [str(small)]
    assert json.loads((tmp_path / "b" / "preprocess.json").read_text())["min_size"] == 16


def test_cli_limits_flags(tmp_path, capsys):
    small = noise(tmp_path / "raw" / "small.png", 10, 10)
    csv = tmp_path / "m.csv"
    manifest_of([small]).to_csv(csv, index=False)
    assert (
        cli_main(["preprocess", str(csv), "--out", str(tmp_path / "o"), "--size", "16", "--jobs", "1", "--no-progress"])
        == 0
    )
    assert "too small: 10x10 px" in capsys.readouterr().out
    assert (
        cli_main(
            [
                "preprocess",
                str(csv),
                "--out",
                str(tmp_path / "p"),
                "--size",
                "16",
                "--jobs",
                "1",
                "--no-progress",
                "--min-size",
                "4",
                "--max-pixels",
                "1000",
            ]
        )
        == 0
    )
    assert "quarantined: 0" in capsys.readouterr().out
    assert cli_main(["preprocess", str(csv), "--out", str(tmp_path / "q"), "--max-pixels", "0"]) == 2


# ----------------------------------------------------------------------------- split folder as a unit


def two_class_splits(tmp_path: Path, n: int = 6, seed: int = 0) -> dict:
    paths = [noise(tmp_path / "raw" / f"img_{seed}_{i}.png", seed=100 * seed + i) for i in range(n)]
    return split_manifest(manifest_of(paths, ["a", "b"] * (n // 2)), (0.5, 0.5, 0.0), seed=0)


def test_split_folder_is_replaced_as_a_unit_and_keeps_foreign_files(tmp_path, monkeypatch):
    out = tmp_path / "split"
    write_split_folder(two_class_splits(tmp_path, seed=1), out)
    old = {name: (out / name).read_bytes() for name in SPLIT_FILES}
    (out / "notes.md").write_text("mine")

    import wbc.fileio as fileio

    real_write = fileio.write_csv_atomic

    def fail_on_audit(df, target):
        if Path(target).name == "audit.csv":
            raise OSError(28, "No space left on device")
        return real_write(df, target)

    monkeypatch.setattr(fileio, "write_csv_atomic", fail_on_audit)
    with pytest.raises(OSError):
        write_split_folder(two_class_splits(tmp_path, seed=2), out)
    assert {name: (out / name).read_bytes() for name in SPLIT_FILES} == old  # old folder intact
    assert (out / "notes.md").read_text() == "mine"
    monkeypatch.setattr(fileio, "write_csv_atomic", real_write)

    write_split_folder(two_class_splits(tmp_path, seed=2), out)
    assert (out / "train.csv").read_bytes() != old["train.csv"]
    assert (out / "notes.md").read_text() == "mine"  # carried over, not lost
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raw", "split"]  # no temporary or lock left


def test_split_refuses_an_empty_label(tmp_path, capsys):
    paths = [noise(tmp_path / "raw" / f"i{i}.png", seed=i) for i in range(4)]
    manifest = manifest_of(paths, ["a", "", "b", "  "])
    with pytest.raises(WbcError, match="2 row\\(s\\) have an empty"):
        split_manifest(manifest, (0.5, 0.5, 0.0))
    csv = tmp_path / "m.csv"
    manifest.to_csv(csv, index=False)
    assert cli_main(["split", str(csv), "--out", str(tmp_path / "split")]) == 2
    err = capsys.readouterr().err
    assert str(paths[1]) in err and str(paths[3]) in err
    assert not (tmp_path / "split").exists()


# ----------------------------------------------------------------------------- file names


def test_manifest_survives_a_file_name_that_is_not_utf8(tmp_path, capsys):
    from wbc.labels import PBC_CLASSES, PBC_PREFIXES

    root = tmp_path / "data" / "PBC_dataset_normal_DIB"
    for i, name in enumerate(PBC_CLASSES):
        prefix = next(iter(PBC_PREFIXES[name]))
        noise(root / name / f"{prefix}_{i}.jpg", seed=i)
    odd = os.fsencode(root / "basophil") + b"/BA_latin1_\xe9\xff.jpg"
    with open(odd, "wb") as fh:
        fh.write(cv2.imencode(".jpg", np.zeros((40, 40, 3), np.uint8))[1].tobytes())
    out = tmp_path / "m.csv"
    assert cli_main(["manifest", "pbc", "--data-dir", str(tmp_path / "data"), "--out", str(out)]) == 0
    manifest = pd.read_csv(out)
    skipped = pd.read_csv(tmp_path / "m_skipped.csv")
    assert len(manifest) == len(PBC_CLASSES)
    row = skipped[skipped["path"].str.contains("BA_latin1_")]
    assert row["path"].iloc[0].endswith("BA_latin1_\\xe9\\xff.jpg")
    assert row["reason"].iloc[0].startswith("unreadable name: not valid UTF-8")
    assert "unreadable name: 1" in capsys.readouterr().out


# ----------------------------------------------------------------------------- permissions


def test_written_files_and_folders_get_ordinary_permissions(tmp_path):
    old = os.umask(0o027)
    try:
        csv = write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "x.csv")
        write_text_atomic(tmp_path / "x.json", "{}")
        out = tmp_path / "split"
        write_split_folder(two_class_splits(tmp_path), out)
    finally:
        os.umask(old)
    assert stat.S_IMODE(csv.stat().st_mode) == 0o640
    assert stat.S_IMODE((tmp_path / "x.json").stat().st_mode) == 0o640
    assert stat.S_IMODE(out.stat().st_mode) == 0o750
    assert {stat.S_IMODE(p.stat().st_mode) for p in out.iterdir()} == {0o640}
    old = os.umask(0o022)
    try:
        write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "y.csv")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "y.csv").stat().st_mode) == 0o644
