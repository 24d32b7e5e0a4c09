"""Reliability with real processes: one writer per folder, stale locks, workers that die with the run.

Every test here starts real processes (``subprocess``), never threads: the guarantees are about
what happens between processes (and when one is killed with SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import psutil
import pytest

from wbc.cli import build_parser
from wbc.cli import main as cli_main
from wbc.errors import WbcError
from wbc.locking import FolderLock, lock_path, read_holder

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX processes and signals")

HOLDER = """
import sys
from wbc.locking import FolderLock
lock = FolderLock(sys.argv[1], sys.argv[2]).acquire()
print("locked", flush=True)
sys.stdin.read()  # hold the lock until the test closes stdin (or kills this process)
lock.release()
"""


class Holder:
    """A separate process holding the lock of ``folder`` until ``release()`` or ``kill()``."""

    def __init__(self, folder: Path, stage: str = "test-holder"):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(folder), stage], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        line = self.proc.stdout.readline()
        assert line.strip() == "locked", line
        self.pid = self.proc.pid

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            self.proc.wait(timeout=20)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()  # SIGKILL: no chance to clean up
        self.proc.wait(timeout=20)


def smear(h: int, w: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), (214, 205, 232), np.uint8)
    cv2.circle(img, (w // 2, h // 2), max(1, min(h, w) // 4), (130, 45, 95), -1)
    return np.clip(img.astype(int) + rng.integers(-5, 6, img.shape), 0, 255).astype(np.uint8)


def raw_images(root: Path, n: int, size: int = 64) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        paths.append(root / f"cell_{i:03d}.png")
        cv2.imwrite(str(paths[-1]), smear(size, size, seed=i))
    return paths


def manifest_csv(path: Path, images: list[Path]) -> Path:
    pd.DataFrame({"path": [str(p) for p in images], "source": "PBC", "label": "cells"}).to_csv(path, index=False)
    return path


def wbc_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "wbc", *args]


# ----------------------------------------------------------------------------- one writer per folder


def test_second_preprocess_process_is_refused_naming_the_first(tmp_path):
    """Two real `preprocess` processes on one folder: the second exits 2 naming the first's PID;
    the first is not disturbed and completes. The first is held mid-run deterministically: one
    of its inputs is a named pipe, which blocks its read until the test writes the image."""
    images = raw_images(tmp_path / "raw", 3)
    fifo = tmp_path / "raw" / "slow.jpg"
    os.mkfifo(fifo)
    csv = manifest_csv(tmp_path / "manifest.csv", [fifo, *images])
    out = tmp_path / "out"
    first = subprocess.Popen(
        wbc_cmd("preprocess", str(csv), "--out", str(out), "--size", "32", "--jobs", "1", "--no-progress"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (read_holder(lock_path(out)) or {}).get("pid") != first.pid:
            assert first.poll() is None, first.communicate()
            time.sleep(0.05)
        second = subprocess.run(
            wbc_cmd("preprocess", str(csv), "--out", str(out), "--size", "32", "--jobs", "1", "--no-progress"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 2, second.stderr
        assert f"PID {first.pid}" in second.stderr and "preprocess" in second.stderr
        assert "Traceback" not in second.stderr
        with open(fifo, "wb") as fh:  # let the first run go on
            fh.write(cv2.imencode(".jpg", smear(64, 64, seed=9))[1].tobytes())
        stdout, stderr = first.communicate(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0, stderr
    assert len(pd.read_csv(out / "manifest.csv")) == 4
    assert not lock_path(out).exists()  # released on exit


def test_split_is_refused_while_another_process_writes_the_folder(tmp_path, capsys):
    rng = np.random.default_rng(0)
    (tmp_path / "raw").mkdir()
    images = [tmp_path / "raw" / f"noise_{i}.png" for i in range(6)]
    for path in images:  # random noise: no two images are near duplicates
        cv2.imwrite(str(path), rng.integers(0, 256, (48, 48, 3), dtype=np.uint8))
    csv = tmp_path / "manifest.csv"
    pd.DataFrame({"path": [str(p) for p in images], "label": ["a", "b"] * 3}).to_csv(csv, index=False)
    out = tmp_path / "split"
    holder = Holder(out, "split")
    try:
        assert cli_main(["split", str(csv), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"PID {holder.pid}" in err and "split" in err
        assert not out.exists()  # nothing written
    finally:
        holder.release()
    assert cli_main(["split", str(csv), "--out", str(out), "--fractions", "0.5", "0.5", "0"]) == 0
    assert (out / "classes.txt").read_text() == "a\nb\n"


def write_split(folder: Path, rows: dict[str, list[tuple[str, str]]], classes: str = "a\nb\n") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "val", "test"):
        pd.DataFrame(rows.get(split, []), columns=["path", "label"]).to_csv(folder / f"{split}.csv", index=False)
    (folder / "classes.txt").write_text(classes)
    return folder


def good_split(folder: Path) -> Path:
    return write_split(
        folder,
        {
            "train": [("/x/a1.jpg", "a"), ("/x/b1.jpg", "b")],
            "val": [("/x/a2.jpg", "a"), ("/x/b2.jpg", "b")],
            "test": [("/x/a3.jpg", "a"), ("/x/b3.jpg", "b")],
        },
    )


def test_train_command_locks_its_run_folder(tmp_path):
    """`train --out RUN` while another process holds RUN: refused naming it, before training
    (the command's main runs without TensorFlow: the lock is taken first)."""
    split = good_split(tmp_path / "split")
    run = tmp_path / "run"
    holder = Holder(run, "train")
    try:
        args = build_parser().parse_args(["train", "--split-dir", str(split), "--model", "cnn1", "--out", str(run)])
        with pytest.raises(WbcError, match=f"PID {holder.pid}"):
            args.func(args)
    finally:
        holder.release()


def test_evaluate_command_locks_the_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"classes": ["a", "b"]}))
    holder = Holder(run, "train")
    try:
        args = build_parser().parse_args(["evaluate", str(run)])
        with pytest.raises(WbcError, match=f"train \\(PID {holder.pid}"):
            args.func(args)
    finally:
        holder.release()


def test_stale_lock_of_a_killed_process_is_taken_over_and_reported(tmp_path):
    images = raw_images(tmp_path / "raw", 2)
    csv = manifest_csv(tmp_path / "manifest.csv", images)
    out = tmp_path / "out"
    holder = Holder(out, "preprocess")
    holder.kill()  # kill -9: the lock file stays behind, naming a dead process
    assert read_holder(lock_path(out))["pid"] == holder.pid
    done = subprocess.run(
        wbc_cmd("preprocess", str(csv), "--out", str(out), "--size", "32", "--jobs", "1", "--no-progress"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "stale lock" in done.stderr and f"PID {holder.pid}" in done.stderr
    assert len(pd.read_csv(out / "manifest.csv")) == 2 and not lock_path(out).exists()


def test_lock_in_the_same_thread_is_reentrant_and_released_once(tmp_path):
    with FolderLock(tmp_path / "f", "outer") as outer:
        with FolderLock(tmp_path / "f", "inner"):
            assert lock_path(tmp_path / "f").exists()
        assert lock_path(tmp_path / "f").exists()  # still held by the outer one
        assert read_holder(outer.path)["stage"] == "outer"
    assert not lock_path(tmp_path / "f").exists()


# ----------------------------------------------------------------------------- workers die with the run


def test_workers_die_when_the_preprocess_process_is_killed(tmp_path):
    """`kill -9` of `preprocess --jobs 2` (the parent only): within seconds no descendant
    (forkserver, workers, resource tracker) survives and no more outputs appear. The last
    input is a named pipe, so without the fix a worker would stay blocked (and alive) forever."""
    images = raw_images(tmp_path / "raw", 60, size=96)
    fifo = tmp_path / "raw" / "blocks.jpg"
    os.mkfifo(fifo)
    csv = manifest_csv(tmp_path / "manifest.csv", [*images, fifo])
    out = tmp_path / "out"
    proc = subprocess.Popen(
        wbc_cmd("preprocess", str(csv), "--out", str(out), "--size", "32", "--jobs", "2", "--no-progress"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    family: list[psutil.Process] = []
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            family = parent.children(recursive=True)
            if len(family) >= 3 and any(out.glob("images/*/*.jpg")):
                break
            time.sleep(0.02)
        assert proc.poll() is None, "the run ended before the test could kill it"
        family = parent.children(recursive=True)
        assert len(family) >= 3  # forkserver, two workers (and the resource tracker)
        os.kill(proc.pid, signal.SIGKILL)  # the parent only
        proc.wait(timeout=10)
        gone, alive = psutil.wait_procs(family, timeout=8)
        assert not alive, [(p.pid, p.name()) for p in alive]
        count = len(list(out.glob("images/*/*.jpg")))
        time.sleep(0.5)
        assert len(list(out.glob("images/*/*.jpg"))) == count  # nothing more is written
    finally:
        for p in family:  # whatever survived a failing run is not left behind
            try:
                p.kill()
            except psutil.Error:
                pass
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    # and the folder resumes cleanly: the stale lock is taken over, only complete outputs kept
    os.unlink(fifo)
    cv2.imwrite(str(fifo), smear(64, 64, seed=99))
    again = subprocess.run(
        wbc_cmd("preprocess", str(csv), "--out", str(out), "--size", "32", "--jobs", "1", "--no-progress"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert again.returncode == 0, again.stderr
    assert len(pd.read_csv(out / "manifest.csv")) == 61
    assert not list(out.rglob("*.part*"))
