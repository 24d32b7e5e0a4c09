"""Bad input and faults: a corpus of broken and unusual files, a vanishing file, an interrupted run.

Expected everywhere: no crash, every bad file listed with a reason, raw files byte-identical
afterwards, and after a resume every good file processed exactly once.
"""

from __future__ import annotations

import collections
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

import wbc.preprocess as pp
from wbc.cli import main as cli_main
from wbc.preprocess import preprocess_manifest, read_image

SIZE = 32


def smear(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (214, 205, 232), np.uint8)  # BGR pale pink
    cv2.circle(img, (w // 2, h // 2), max(1, min(h, w) // 4), (130, 45, 95), -1)
    return np.clip(img.astype(int) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)


def build_corpus(root: Path) -> tuple[pd.DataFrame, dict[str, str]]:
    """Good and bad files under ``root``; returns the manifest and {bad path: expected reason}."""
    from PIL import Image

    root.mkdir(parents=True)
    good = {
        "normal.jpg": lambda p: cv2.imwrite(str(p), smear(60, 64)),
        "gray.png": lambda p: cv2.imwrite(str(p), smear(40, 40)[:, :, 0]),
        "deep16.tiff": lambda p: cv2.imwrite(str(p), smear(50, 50).astype(np.uint16) * 257),
        "rgba.tiff": lambda p: cv2.imwrite(str(p), cv2.cvtColor(smear(40, 40), cv2.COLOR_BGR2BGRA)),
        "palette.png": lambda p: Image.fromarray(smear(30, 30)).convert("P").save(p),
        "sixteen_px.png": lambda p: cv2.imwrite(str(p), smear(16, 16)),  # the smallest size used
        "huge.jpg": lambda p: cv2.imwrite(
            str(p), cv2.resize(smear(60, 60), (6000, 6000), interpolation=cv2.INTER_NEAREST)
        ),
    }
    jpeg = cv2.imencode(".jpg", smear(80, 80, seed=3))[1].tobytes()
    bad = {
        "empty.jpg": (b"", "empty file (0 bytes)"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "truncated JPEG"),
        "random.jpg": (np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes(), "not an image"),
        ".DS_169665.jpg": (b"\x00\x00\x00\x01Bud1" + bytes(600), ".DS_Store"),
        "fake.png": (b"\x89PNG\r\n\x1a\n" + bytes(100), "corrupt or truncated PNG"),
        # below the minimum size (16 px): quarantined, not upscaled
        "one_pixel.png": (cv2.imencode(".png", np.full((1, 1, 3), 200, np.uint8))[1].tobytes(), "too small: 1x1 px"),
    }
    rows, reasons = [], {}
    for name, make in good.items():
        make(root / name)
        rows.append(root / name)
    for name, (content, reason) in bad.items():
        (root / name).write_bytes(content)
        rows.append(root / name)
        reasons[str(root / name)] = reason
    manifest = pd.DataFrame(
        {"path": [str(p) for p in rows], "source": "PBC", "source_label": "cells", "sub_label": "", "label": "cells"}
    )
    return manifest, reasons


def tree_digests(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad-input") / "raw"
    manifest, reasons = build_corpus(root)
    return root, manifest, reasons


def test_every_bad_file_is_quarantined_with_its_reason_and_raw_files_stay_untouched(corpus, tmp_path):
    root, manifest, reasons = corpus
    before = tree_digests(root)
    processed, quarantine = preprocess_manifest(manifest, tmp_path / "out", SIZE, jobs=1, progress=False)
    assert tree_digests(root) == before
    assert sorted(quarantine["path"]) == sorted(reasons)
    for row in quarantine.itertuples():
        assert reasons[row.path] in row.reason, (row.path, row.reason)
    good = set(manifest["path"]) - set(reasons)
    assert set(processed["raw_path"]) == good
    for row in processed.itertuples():
        assert read_image(row.path).shape == (SIZE, SIZE, 3)
    sizes = dict(zip(processed["raw_path"].map(os.path.basename), zip(processed["width"], processed["height"])))
    assert sizes["huge.jpg"] == (6000, 6000) and sizes["sixteen_px.png"] == (16, 16)
    on_disk = pd.read_csv(tmp_path / "out" / "quarantine.csv")
    assert sorted(on_disk["path"]) == sorted(reasons) and on_disk["reason"].str.len().min() > 5


def test_parallel_run_quarantines_the_same_files(corpus, tmp_path):
    root, manifest, reasons = corpus
    processed, quarantine = preprocess_manifest(manifest, tmp_path / "out", SIZE, jobs=2, progress=False)
    assert sorted(quarantine["path"]) == sorted(reasons)
    assert len(processed) == len(manifest) - len(reasons)


def test_file_that_disappears_mid_run_is_reported(tmp_path, monkeypatch):
    root = tmp_path / "raw"
    manifest, _ = build_corpus(root)
    manifest = manifest[manifest["path"].str.endswith(("normal.jpg", "gray.png", "rgba.tiff"))]
    victim = str(root / "rgba.tiff")
    real = pp._process_one

    def delete_then_process(task, settings):
        if task["raw"] == str(root / "gray.png"):  # processed just before the victim
            os.remove(victim)
        return real(task, settings)

    monkeypatch.setattr(pp, "_process_one", delete_then_process)
    processed, quarantine = preprocess_manifest(manifest, tmp_path / "out", SIZE, jobs=1, progress=False)
    assert quarantine["path"].tolist() == [victim]
    assert "file not found" in quarantine["reason"].iloc[0]
    assert len(processed) == 2


def test_interrupted_run_resumes_and_processes_every_good_file_exactly_once(corpus, tmp_path, monkeypatch):
    root, manifest, reasons = corpus
    before = tree_digests(root)
    out = tmp_path / "out"
    writes: collections.Counter = collections.Counter()
    real_write, real_process = pp._write_jpeg, pp._process_one

    def counting_write(target, data):
        writes[str(target)] += 1
        real_write(target, data)

    calls = {"n": 0}

    def interrupt_after_three(task, settings):
        calls["n"] += 1
        if calls["n"] > 3:
            raise KeyboardInterrupt
        return real_process(task, settings)

    monkeypatch.setattr(pp, "_write_jpeg", counting_write)
    monkeypatch.setattr(pp, "_process_one", interrupt_after_three)
    with pytest.raises(KeyboardInterrupt):
        preprocess_manifest(manifest, out, SIZE, jobs=1, progress=False)
    assert not (out / "manifest.csv").exists()  # the manifest is written only when the run completes
    assert sum(writes.values()) == 3

    monkeypatch.setattr(pp, "_process_one", real_process)
    processed, quarantine = preprocess_manifest(manifest, out, SIZE, jobs=1, progress=False)
    good = set(manifest["path"]) - set(reasons)
    assert set(processed["raw_path"]) == good and sorted(quarantine["path"]) == sorted(reasons)
    assert processed.attrs["counts"]["skipped"] == 3
    assert set(writes) == set(processed["path"]) and set(writes.values()) == {1}  # each good file once
    for path in processed["path"]:
        assert read_image(path).shape == (SIZE, SIZE, 3)
    assert not list(out.rglob("*.part*"))
    assert tree_digests(root) == before


def test_killed_subprocess_leaves_only_complete_outputs_and_resumes(tmp_path):
    root = tmp_path / "raw"
    root.mkdir()
    paths = []
    for i in range(60):
        paths.append(root / f"cell_{i:02d}.jpg")
        cv2.imwrite(str(paths[-1]), smear(300, 300, seed=i))
    csv = tmp_path / "manifest.csv"
    pd.DataFrame({"path": [str(p) for p in paths], "source": "PBC", "label": "cells"}).to_csv(csv, index=False)
    out = tmp_path / "out"
    cmd = [
        sys.executable,
        "-m",
        "wbc",
        "preprocess",
        str(csv),
        "--out",
        str(out),
        "--size",
        "64",
        "--jobs",
        "2",
        "--no-progress",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not (out / "progress.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    killed = proc.poll() is None
    if killed:
        os.killpg(proc.pid, signal.SIGKILL)  # a hard kill, workers included
    proc.wait()

    processed, quarantine = preprocess_manifest(pd.read_csv(csv), out, 64, jobs=1, progress=False)
    assert quarantine.empty and len(processed) == len(paths)
    counts = processed.attrs["counts"]
    assert counts["processed"] + counts["skipped"] == len(paths)
    if killed:  # the kill came mid-run: finished (journaled) outputs were kept, the rest done now
        assert counts["skipped"] > 0  # (under heavy load the kill may land after the last image)
    for path in processed["path"]:
        assert read_image(path).shape == (64, 64, 3)
    assert not list(out.rglob("*.part*"))


def test_cli_reports_each_bad_file(corpus, tmp_path, capsys):
    root, manifest, reasons = corpus
    csv = tmp_path / "manifest.csv"
    manifest.to_csv(csv, index=False)
    assert (
        cli_main(
            [
                "preprocess",
                str(csv),
                "--out",
                str(tmp_path / "out"),
                "--size",
                str(SIZE),
                "--jobs",
                "1",
                "--no-progress",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert f"quarantined: {len(reasons)}" in printed
    for path in reasons:
        assert f"quarantined {path}:" in printed


@pytest.mark.parametrize("content", ["", "path,label\n", "not,a\nmanifest,at all\n"])
def test_cli_rejects_empty_or_wrong_manifests_clearly(tmp_path, capsys, content):
    csv = tmp_path / "manifest.csv"
    csv.write_text(content)
    code = cli_main(["preprocess", str(csv), "--out", str(tmp_path / "out"), "--no-progress"])
    if content == "path,label\n":  # a valid, empty manifest: nothing to do, empty outputs
        assert code == 0 and pd.read_csv(tmp_path / "out" / "manifest.csv").empty
    else:
        assert code == 2 and str(csv) in capsys.readouterr().err
