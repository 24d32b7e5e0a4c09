"""The whole command-line chain, end to end: manifest -> preprocess -> split -> train -> evaluate
-> predict (with Grad-CAM), on the generated demo data and on the real sample.

The stages run through ``wbc.cli.main`` in this process (TensorFlow is imported once); one
subprocess test checks the real ``python -m wbc`` entry point, its help and its exit codes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_evaluate import EXPECTED_FILES

from wbc.cli import main as wbc

IMAGE_SIZE = 48


def run_chain(data_dir: Path, work: Path, capsys, predict_inputs: list[Path]) -> dict:
    """Run every stage on ``data_dir`` (wbc10), checking what each one writes; returns paths."""
    manifest, processed, split_dir, run = work / "manifest.csv", work / "processed", work / "split", work / "run"

    assert wbc(["manifest", "wbc10", "--data-dir", str(data_dir), "--out", str(manifest)]) == 0
    assert manifest.is_file() and (work / "manifest_skipped.csv").is_file()
    n_listed = len(pd.read_csv(manifest))

    assert (
        wbc(["preprocess", str(manifest), "--out", str(processed), "--size", "64", "--jobs", "1", "--no-progress"]) == 0
    )
    kept = pd.read_csv(processed / "manifest.csv")
    quarantined = pd.read_csv(processed / "quarantine.csv")
    assert len(kept) + len(quarantined) == n_listed  # every image accounted for
    assert all(Path(p).is_file() for p in kept["path"])

    assert wbc(["split", str(processed / "manifest.csv"), "--out", str(split_dir)]) == 0
    for name in ("train.csv", "val.csv", "test.csv", "audit.csv", "classes.txt"):
        assert (split_dir / name).is_file()
    test_csv = pd.read_csv(split_dir / "test.csv")

    assert (
        wbc(
            [
                "train",
                "--split-dir",
                str(split_dir),
                "--model",
                "cnn1",
                "--out",
                str(run),
                "--image-size",
                str(IMAGE_SIZE),
                "--epochs",
                "2",
                "--batch-size",
                "16",
                "--quiet",
            ]
        )
        == 0
    )
    for name in ("model.keras", "history.csv", "config.json"):
        assert (run / name).is_file()
    assert len(pd.read_csv(run / "history.csv")) >= 1
    recorded = json.loads((run / "config.json").read_text())["preprocess"]  # predict repeats it
    assert recorded["size"] == 64 and recorded["mode"] == "stretch" and recorded["colour"] is None
    capsys.readouterr()

    assert wbc(["evaluate", str(run), "--n-boot", "200"]) == 0
    printed = capsys.readouterr().out
    out = run / "evaluation" / "test"
    assert "accuracy" in printed and str(out) in printed
    for name in EXPECTED_FILES:  # what `evaluate` writes (tests/test_evaluate.py)
        assert (out / name).is_file(), name
    metrics = json.loads((out / "metrics.json").read_text())
    predictions = pd.read_csv(out / "predictions.csv")
    classes = (split_dir / "classes.txt").read_text().split()
    assert metrics["classes"] == classes and metrics["split"] == "test"
    assert metrics["n_images"] == len(predictions) == len(test_csv)
    assert sorted(predictions["path"]) == sorted(test_csv["path"])
    # metrics.json is consistent with predictions.csv
    assert metrics["accuracy"] == pytest.approx((predictions["true_label"] == predictions["predicted_label"]).mean())
    probs = predictions[[f"p_{c}" for c in classes]].to_numpy()
    assert (predictions["predicted_label"] == [classes[i] for i in probs.argmax(axis=1)]).all()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-4)
    assert sum(v["support"] for v in metrics["per_class"].values()) == len(predictions)
    low, high = metrics["ci95"]["accuracy"]
    assert low <= metrics["accuracy"] <= high

    cams, csv = work / "gradcam", work / "predictions.csv"
    args = ["predict", str(run), *map(str, predict_inputs), "--top-k", "3", "--gradcam", str(cams), "--out", str(csv)]
    assert wbc(args) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(csv)
    assert len(table) >= len(predict_inputs) and table["error"].isna().all()
    assert set(table["top1_label"]) <= set(classes)
    assert (table["top1_prob"] >= table["top2_prob"]).all() and (table["top2_prob"] >= table["top3_prob"]).all()
    assert len(list(cams.glob("*_gradcam.png"))) == len(table)
    assert all(p in printed for p in table["path"])

    bad = work / "not-a-cell.jpg"
    bad.write_bytes(b"these bytes are not an image")
    assert wbc(["predict", str(run), str(bad)]) == 2
    assert "not-a-cell.jpg" in capsys.readouterr().err
    return {"run": run, "metrics": metrics}


@pytest.mark.slow
def test_chain_on_demo_data(demo_root, tmp_path, capsys):
    pbc = demo_root / "PBC_dataset_normal_DIB"
    inputs = [pbc / "basophil", next((demo_root / "AML-Cytomorphology_LMU" / "MYO").glob("*.tiff"))]
    run_chain(demo_root, tmp_path, capsys, inputs)


@pytest.mark.slow
@pytest.mark.realsample
def test_chain_on_real_sample(real_sample, tmp_path, capsys):
    inputs = [
        real_sample / "AML-Cytomorphology_LMU" / "BAS",
        next((real_sample / "PBC_dataset_normal_DIB" / "eosinophil").glob("EO_*.jpg")),
    ]
    result = run_chain(real_sample, tmp_path, capsys, inputs)
    assert len(result["metrics"]["classes"]) == 10


def test_entry_point_help_and_errors(tmp_path):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}

    def cli(*args):
        return subprocess.run(
            [sys.executable, "-m", "wbc", *args], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
        )

    for verb in ("evaluate", "predict"):
        done = cli(verb, "--help")
        assert done.returncode == 0 and "RUN_DIR" in done.stdout.upper()
    done = cli("evaluate", str(tmp_path / "missing-run"))
    assert done.returncode == 2 and "error:" in done.stderr and "missing-run" in done.stderr
    done = cli("predict", str(tmp_path / "missing-run"), "x.jpg")
    assert done.returncode == 2 and "run folder not found" in done.stderr
    assert cli("predict").returncode == 2  # argparse: run folder and paths are required
