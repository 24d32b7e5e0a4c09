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


def run_chain(
    data_dir: Path, work: Path, capsys, predict_inputs: list[Path], preprocess_args=(), train_args=()
) -> dict:
    """Run every stage on ``data_dir`` (wbc10), checking what each one writes; returns paths.
    ``preprocess_args`` and ``train_args`` are added to those stages' options."""
    manifest, processed, split_dir, run = work / "manifest.csv", work / "processed", work / "split", work / "run"

    assert wbc(["manifest", "wbc10", "--data-dir", str(data_dir), "--out", str(manifest)]) == 0
    assert manifest.is_file() and (work / "manifest_skipped.csv").is_file()
    n_listed = len(pd.read_csv(manifest))

    assert (
        wbc(
            ["preprocess", str(manifest), "--out", str(processed), "--size", "64", "--jobs", "1", "--no-progress"]
            + list(preprocess_args)
        )
        == 0
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
                *train_args,
            ]
        )
        == 0
    )
    for name in ("model.keras", "history.csv", "config.json"):
        assert (run / name).is_file()
    assert len(pd.read_csv(run / "history.csv")) >= 1
    recorded = json.loads((run / "config.json").read_text())["preprocess"]  # predict repeats it
    assert recorded["size"] == 64 and recorded["mode"] == "stretch"
    assert recorded["colour"] == (
        preprocess_args[preprocess_args.index("--colour") + 1] if "--colour" in preprocess_args else None
    )
    assert recorded["crop_cell"] == ("--crop-cell" in preprocess_args)
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


@pytest.mark.slow
@pytest.mark.realsample
def test_chain_across_labs_on_real_sample(real_sample, tmp_path, capsys):
    """Cropped around the cell, Reinhard-normalised, trained with stain augmentation; predict on
    LMU TIFFs (raw, another lab) applies the run's crop and normalisation."""
    inputs = [real_sample / "AML-Cytomorphology_LMU" / "MON"]
    result = run_chain(
        real_sample, tmp_path, capsys, inputs, ("--crop-cell", "--colour", "reinhard"), ("--stain-augment",)
    )
    assert json.loads((result["run"] / "config.json").read_text())["stain_augment"] is True
    assert {"crop_x", "crop_y", "crop_size"} <= set(pd.read_csv(tmp_path / "processed" / "manifest.csv").columns)


@pytest.mark.realsample
@pytest.mark.parametrize("colour", ["reinhard", "macenko"])
def test_crop_and_stain_normalisation_on_all_three_datasets(real_sample, tmp_path, colour):
    """``preprocess --crop-cell --colour reinhard|macenko`` on part of each real-sample dataset: every
    image written (with its crop box inside reach of the image) or quarantined for a stated reason."""
    for dataset in ("pbc", "lmu", "all"):
        manifest = tmp_path / f"{dataset}.csv"
        assert wbc(["manifest", dataset, "--data-dir", str(real_sample), "--out", str(manifest)]) == 0
        rows = pd.read_csv(manifest, keep_default_na=False)
        rows.groupby("label").head(3).to_csv(manifest, index=False)
        out = tmp_path / f"{dataset}_{colour}"
        args = ["preprocess", str(manifest), "--out", str(out), "--size", "64", "--jobs", "1", "--no-progress"]
        assert wbc([*args, "--crop-cell", "--colour", colour]) == 0
        kept, quarantined = pd.read_csv(out / "manifest.csv"), pd.read_csv(out / "quarantine.csv")
        assert len(kept) + len(quarantined) == len(pd.read_csv(manifest))
        assert len(kept) >= 0.8 * len(pd.read_csv(manifest)), quarantined["reason"].tolist()
        assert quarantined["reason"].str.match(r"no white cell found|macenko colour normalisation failed").all()
        assert (kept["crop_size"] > 8).all() and (kept["crop_x"] < kept["width"]).all()
        assert (kept["crop_x"] + kept["crop_size"] > 0).all() and (kept["crop_y"] < kept["height"]).all()
        assert json.loads((out / "preprocess.json").read_text())["crop_cell"] is True


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
