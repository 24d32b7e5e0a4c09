"""wbc.experiments: reusable runs, the one-factor grid (resumable), external-validation splits."""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pandas as pd
import pytest

from wbc import experiments
from wbc.config import get_profile
from wbc.errors import WbcError


# ----------------------------------------------------------------------------- test data

def write_images(folder: Path, n: int, seed: int, size: int = 32) -> list[str]:
    """``n`` distinct random colour images (so no two are duplicates of each other)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        path = folder / f"img_{seed}_{i}.png"
        cv2.imwrite(str(path), image)
        paths.append(str(path))
    return paths


def tiny_split(root: Path, classes=("a", "b"), per_split=(6, 2, 2)) -> Path:
    """A split folder with random images; class ``b`` images are brighter so a model can learn."""
    split_dir = root / "split"
    for s, (name, n) in enumerate(zip(("train", "val", "test"), per_split)):
        rows = []
        for c, label in enumerate(classes):
            for path in write_images(root / "img" / name / label, n, seed=100 * s + c):
                if c:
                    cv2.imwrite(path, np.clip(cv2.imread(path).astype(int) + 120, 0, 255).astype(np.uint8))
                rows.append({"path": path, "label": label})
        split_dir.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).to_csv(split_dir / f"{name}.csv", index=False)
    (split_dir / "classes.txt").write_text("\n".join(classes) + "\n")
    return split_dir


def fake_ctx(tmp_path: Path, profile: str = "ci") -> SimpleNamespace:
    return SimpleNamespace(profile=get_profile(profile), work_dir=tmp_path / "work", seed=7, is_demo=True,
                           data_dir=tmp_path / "data", datasets=("ALL",), dataset="all4")


@pytest.fixture
def fake_training(monkeypatch):
    """Replace wbc.train.train_model by a recorder that writes a complete run folder instantly."""
    calls = []

    def train_model(split_dir, model_name, out_dir, **kwargs):
        calls.append({"model": model_name, **kwargs})
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for name in experiments.RUN_FILES:
            (out / name).write_text("{}" if name.endswith(".json") else "x")
        return out

    monkeypatch.setattr("wbc.train.train_model", train_model)
    return calls


# ----------------------------------------------------------------------------- reusable runs

def test_ensure_run_trains_once_then_reuses(tmp_path, fake_training, capsys):
    split_dir = tiny_split(tmp_path)
    ctx = fake_ctx(tmp_path)
    run = experiments.ensure_run(ctx, "r", "cnn1", split_dir)
    assert run == ctx.work_dir / "runs" / "r" and len(fake_training) == 1
    # profile defaults reach train_model; verbose does not count as a setting
    assert fake_training[0]["epochs"] == ctx.profile.epochs and fake_training[0]["seed"] == 7
    experiments.ensure_run(ctx, "r", "cnn1", split_dir, verbose=0)
    assert len(fake_training) == 1 and "Reusing" in capsys.readouterr().out


def test_ensure_run_retrains_when_settings_split_or_files_change(tmp_path, fake_training, capsys):
    split_dir = tiny_split(tmp_path)
    ctx = fake_ctx(tmp_path)
    run = experiments.ensure_run(ctx, "r", "cnn1", split_dir)
    experiments.ensure_run(ctx, "r", "cnn1", split_dir, epochs=3)
    assert len(fake_training) == 2 and "settings or split changed" in capsys.readouterr().out
    df = pd.read_csv(split_dir / "train.csv")
    df.iloc[:-1].to_csv(split_dir / "train.csv", index=False)  # a different split
    experiments.ensure_run(ctx, "r", "cnn1", split_dir, epochs=3)
    assert len(fake_training) == 3
    (run / "model.keras").unlink()  # an interrupted run
    experiments.ensure_run(ctx, "r", "cnn1", split_dir, epochs=3)
    assert len(fake_training) == 4 and "incomplete run" in capsys.readouterr().out
    experiments.ensure_run(ctx, "r", "cnn1", split_dir, epochs=3, rebuild=True)
    assert len(fake_training) == 5


def test_ensure_run_needs_a_split(tmp_path, fake_training):
    with pytest.raises(WbcError, match="train.csv"):
        experiments.ensure_run(fake_ctx(tmp_path), "r", "cnn1", tmp_path / "nowhere")
    assert fake_training == []


# ----------------------------------------------------------------------------- grid

def test_one_factor_at_a_time_changes_exactly_one_knob():
    base = {"lr": 1e-3, "depth": 3, "activation": "relu"}
    configs = experiments.one_factor_at_a_time(base, {"lr": [1e-2, 1e-3], "activation": ["tanh"]})
    assert [c.name for c in configs] == ["baseline", "lr=0.01", "activation=tanh"]  # lr=1e-3 is the baseline
    for c in configs[1:]:
        assert [k for k in base if c.params[k] != base[k]] == [c.factor]
    assert configs[1].slug == "lr-0.01"
    with pytest.raises(WbcError, match="no baseline value"):
        experiments.one_factor_at_a_time(base, {"kernel": [3]})


def test_study_settings_and_cnn2_kwargs():
    ci = experiments.study_settings(get_profile("ci"))
    configs = experiments.one_factor_at_a_time(experiments.STUDY_BASELINE, ci["factors"])
    assert ci["image_size"] == 32 and ci["epochs"] == 1 and len(configs) == 6
    full = experiments.study_settings(get_profile("full"))
    assert len(full["seeds"]) == 3 and set(full["factors"]) == set(experiments.STUDY_BASELINE)
    kwargs = experiments.cnn2_kwargs(experiments.STUDY_BASELINE)
    assert kwargs["blocks"] == ((6, 5, 1, 0), (12, 3, 1, 0), (32, 3, 1, 1))  # Study B's CNN2
    assert "filters" not in kwargs and kwargs["depth"] == 3 and kwargs["lr"] == 1e-3
    with pytest.raises(WbcError, match="one value per block"):
        experiments.cnn2_kwargs({"filters": "6-12", "kernel_size": "5-3-3"})


def test_run_grid_is_resumable(tmp_path, fake_training, monkeypatch):
    split_dir = tiny_split(tmp_path)
    scores = iter(np.linspace(0.5, 0.9, 50))
    monkeypatch.setattr(experiments, "score_run",
                        lambda run_dir, split="val": {"accuracy": next(scores), "macro_f1": 0.5, "params": 10})
    base = {"lr": 1e-3, "dropout": 0.0}
    configs = experiments.one_factor_at_a_time(base, {"lr": [1e-2]})
    out = tmp_path / "grid"
    first = experiments.run_grid(split_dir, "cnn2", configs, out, seeds=[0, 1], epochs=1, progress=False)
    assert len(first) == 4 and len(fake_training) == 4
    assert {c["seed"] for c in fake_training} == {0, 1} and all(c["epochs"] == 1 for c in fake_training)
    assert len(pd.read_csv(out / "results.csv")) == 4
    again = experiments.run_grid(split_dir, "cnn2", configs, out, seeds=[0, 1], epochs=1, progress=False)
    assert len(fake_training) == 4  # nothing trained again
    pd.testing.assert_frame_equal(again[["config", "seed", "accuracy"]], first[["config", "seed", "accuracy"]])
    summary = experiments.summarise_grid(again)  # read back from CSV: the baseline's empty value survives
    assert list(summary["config"]) == ["baseline", "lr=0.01"] and list(summary["seeds"]) == [2, 2]
    more = experiments.one_factor_at_a_time(base, {"lr": [1e-2], "dropout": [0.5]})
    grown = experiments.run_grid(split_dir, "cnn2", more, out, seeds=[0, 1], epochs=1, progress=False)
    assert len(fake_training) == 6 and len(grown) == 6
    assert list(grown["config"].unique()) == ["baseline", "lr=0.01", "dropout=0.5"]


def test_summarise_grid_means_spreads_and_deltas():
    results = pd.DataFrame({
        "config": ["baseline", "baseline", "lr=0.01", "lr=0.01"], "factor": ["baseline"] * 2 + ["lr"] * 2,
        "value": ["", "", "0.01", "0.01"], "seed": [0, 1, 0, 1], "accuracy": [0.8, 0.9, 0.6, 0.7],
        "macro_f1": [0.7, 0.9, 0.5, 0.5], "params": [10, 10, 10, 10], "seconds": [1.0, 3.0, 2.0, 2.0]})
    summary = experiments.summarise_grid(results).set_index("config")
    assert summary.loc["baseline", "macro_f1"] == pytest.approx(0.8)
    assert summary.loc["baseline", "macro_f1_std"] == pytest.approx(np.std([0.7, 0.9], ddof=1), abs=1e-4)
    assert summary.loc["lr=0.01", "delta_macro_f1"] == pytest.approx(-0.3)
    assert summary.loc["lr=0.01", "seeds"] == 2
    fig = experiments.plot_grid(summary.reset_index())
    assert fig.axes[0].get_title() == "lr" and "macro F1" in fig.axes[0].get_ylabel()


# ----------------------------------------------------------------------------- comparison and predictions

def test_comparison_table_keeps_published_and_measured_apart(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"model": "cnn2", "image_size": 64, "epochs_run": 2,
                                                 "parameters": {"epochs": 5}}))
    metrics = {"accuracy": 0.5, "macro_f1": 0.4, "n_images": 20, "ci95": {"accuracy": [0.3, 0.7]}}
    row = experiments.measured_result(fake_ctx(tmp_path), run, metrics, task="all4")
    table = experiments.comparison_table([row], study="Study B")
    published = table[table["kind"] == "published"]
    assert list(published["accuracy"]) == [0.7798, 0.8318, 0.9969]  # Study B, Tabla 1
    measured = table[table["kind"] == "measured"].iloc[0]
    assert measured["epochs"] == 2 and measured["image_size"] == 64 and measured["profile"] == "ci"
    assert "demo" in measured["data"] and measured["accuracy_ci95"] == "0.300-0.700"
    assert set(experiments.comparison_table([])["study"]) == {"Study A", "Study B"}


def test_confident_errors_and_gradcam_examples():
    preds = pd.DataFrame({"path": list("abcde"), "true_label": ["x", "x", "y", "y", "x"],
                          "predicted_label": ["x", "y", "x", "y", "y"], "confidence": [0.9, 0.6, 0.8, 0.7, 0.95]})
    errors = experiments.confident_errors(preds, n=2)
    assert list(errors["path"]) == ["e", "c"]
    picked = experiments.gradcam_examples(preds, n=1)
    assert list(picked["path"]) == ["a", "e"] and list(picked["correct"]) == [True, False]


def test_generalisation_gap():
    history = pd.DataFrame({"phase": [1, 1, 2], "accuracy": [0.5, 0.8, 0.9], "val_accuracy": [0.5, 0.6, 0.6]})
    gap = experiments.generalisation_gap(history)
    assert list(gap["gap"]) == pytest.approx([0.0, 0.2, 0.3]) and list(gap["epoch"]) == [1, 2, 3]


# ----------------------------------------------------------------------------- external validation

def two_source_manifest(root: Path) -> pd.DataFrame:
    rows = []
    layout = {("PBC", "basophil"): 10, ("PBC", "eosinophil"): 10, ("PBC", "monocyte"): 10,
              ("LMU", "basophil"): 3, ("LMU", "eosinophil"): 3, ("LMU", "myeloblast"): 3,
              ("LMU", "monocyte"): 1}
    for i, ((source, label), n) in enumerate(layout.items()):
        for path in write_images(root / source / label, n, seed=i):
            rows.append({"path": path, "source": source, "source_label": label, "sub_label": "", "label": label})
    return pd.DataFrame(rows)


def test_shared_classes(tmp_path):
    manifest = two_source_manifest(tmp_path)
    assert experiments.shared_classes(manifest) == ["basophil", "eosinophil", "monocyte"]
    assert experiments.shared_classes(manifest, min_images=2) == ["basophil", "eosinophil"]
    with pytest.raises(WbcError, match="no ALL images"):
        experiments.shared_classes(manifest, ("PBC", "ALL"))


def test_build_external_split(tmp_path, capsys):
    manifest = two_source_manifest(tmp_path)
    ext = experiments.build_external_split(manifest, tmp_path / "ext", seed=0)
    assert ext.classes == ["basophil", "eosinophil"]  # monocyte: 1 LMU image < min_images; myeloblast: LMU only
    assert "monocyte" in capsys.readouterr().out
    internal = pd.concat(pd.read_csv(ext.internal / f"{s}.csv") for s in ("train", "val", "test"))
    external = pd.read_csv(ext.external / "test.csv")
    assert set(internal["source"]) == {"PBC"} and set(external["source"]) == {"LMU"}
    assert len(internal) == 20 and len(external) == 6
    assert not set(internal["path"]) & set(external["path"])
    for s in ("train", "val", "test"):  # stratified: every class in every internal split
        assert set(pd.read_csv(ext.internal / f"{s}.csv")["label"]) == set(ext.classes)
    counts = ext.counts()
    assert counts.loc["total", "external test"] == 6 and counts.loc["total"].sum() == 26
    assert (ext.internal / "classes.txt").read_text() == (ext.external / "classes.txt").read_text()
    again = experiments.build_external_split(manifest, tmp_path / "ext", seed=0)
    assert again.classes == ext.classes and "reusing" in capsys.readouterr().out


def test_build_external_split_needs_two_shared_classes(tmp_path):
    manifest = two_source_manifest(tmp_path)
    with pytest.raises(WbcError, match="at least two"):
        experiments.build_external_split(manifest, tmp_path / "ext", min_images=4)


# ----------------------------------------------------------------------------- real training

@pytest.mark.slow
def test_ensure_run_and_score_run_with_a_real_model(tmp_path):
    split_dir = tiny_split(tmp_path)
    ctx = fake_ctx(tmp_path)
    run = experiments.ensure_run(ctx, "cnn1", "cnn1", split_dir, image_size=32, epochs=1, batch_size=4, verbose=0)
    assert experiments.run_is_complete(run)
    stamp = (run / "model.keras").stat().st_mtime_ns
    assert experiments.ensure_run(ctx, "cnn1", "cnn1", split_dir, image_size=32, epochs=1, batch_size=4) == run
    assert (run / "model.keras").stat().st_mtime_ns == stamp  # reused, not retrained
    score = experiments.score_run(run, split="test")
    assert 0 <= score["accuracy"] <= 1 and 0 <= score["macro_f1"] <= 1
    assert score["params"] == experiments.read_config(run)["params_total"] > 0


def test_request_fingerprint_includes_resolved_defaults(tmp_path):
    split = tiny_split(tmp_path)
    implicit = experiments.training_request("cnn1", split, {"epochs": 2})
    explicit = experiments.training_request("cnn1", split, {"epochs": 2, "augment": True, "verbose": 0})
    assert implicit == explicit and implicit["settings"]["augment"] is True
    assert experiments.training_request("cnn1", split, {"epochs": 2, "augment": False}) != implicit


def test_model_label_is_readable():
    assert experiments.model_label({"model": "resnet50", "weights": "none"}) == "ResNet50, random init"
    assert experiments.model_label({"model": "resnet50", "weights": "imagenet"}) == "ResNet50, ImageNet"
    assert experiments.model_label({"model": "cnn2"}) == "CNN2"
