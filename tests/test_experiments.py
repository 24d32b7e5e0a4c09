"""wbc.experiments: the published numbers beside ours, the one-factor design, external-validation splits."""

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


def fake_ctx(tmp_path: Path, profile: str = "ci") -> SimpleNamespace:
    return SimpleNamespace(
        profile=get_profile(profile),
        work_dir=tmp_path / "work",
        seed=7,
        is_demo=True,
        data_dir=tmp_path / "data",
        datasets=("ALL",),
        dataset="all4",
    )


# ----------------------------------------------------------------------------- study design


def test_one_factor_at_a_time_changes_exactly_one_knob():
    base = {"lr": 1e-3, "depth": 3, "activation": "relu"}
    configs = experiments.one_factor_at_a_time(base, {"lr": [1e-2, 1e-3], "activation": ["tanh"]})
    assert [c.name for c in configs] == ["baseline", "lr=0.01", "activation=tanh"]  # lr=1e-3 is the baseline
    for c in configs[1:]:
        assert [k for k in base if c.params[k] != base[k]] == [c.factor]
    assert configs[1].slug == "lr-0.01"
    with pytest.raises(WbcError, match="no baseline value"):
        experiments.one_factor_at_a_time(base, {"kernel": [3]})


def test_study_settings_follow_the_profile():
    ci = experiments.study_settings(get_profile("ci"))
    configs = experiments.one_factor_at_a_time(experiments.STUDY_BASELINE, ci["factors"])
    assert ci["image_size"] == 32 and ci["epochs"] == 1 and ci["seeds"] == [0] and len(configs) == 6
    demo = experiments.study_settings(get_profile("demo"))
    assert demo["epochs"] == get_profile("demo").study_epochs and demo["seeds"] == [0, 1]
    assert len(experiments.one_factor_at_a_time(experiments.STUDY_BASELINE, demo["factors"])) == 13
    full = experiments.study_settings(get_profile("full"))
    assert len(full["seeds"]) == 3 and set(full["factors"]) == set(experiments.STUDY_BASELINE)
    # Study B's CNN2 ("6-12-32", kernels "5-3-3", 3 blocks), as notebook 12 turns it into build_cnn2 blocks
    base = experiments.STUDY_BASELINE
    assert (base["filters"], base["kernel_size"], base["depth"]) == ("6-12-32", "5-3-3", 3)


# ----------------------------------------------------------------------------- comparison with the studies


def test_comparison_table_keeps_published_and_measured_apart(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(
        json.dumps(
            {"model": "resnet50", "weights": "none", "image_size": 64, "epochs_run": 2, "settings": {"epochs": 5}}
        )
    )
    metrics = {"accuracy": 0.5, "macro_f1": 0.4, "n_images": 20, "ci95": {"accuracy": [0.3, 0.7]}}
    row = experiments.measured_result(fake_ctx(tmp_path), run, metrics, task="all4")
    assert row["model"] == "ResNet50, random init"  # a run without ImageNet weights says so
    table = experiments.comparison_table([row], study="Study B")
    published = table[table["kind"] == "published"]
    assert list(published["accuracy"]) == [0.7798, 0.8318, 0.9969]  # Study B, Tabla 1
    measured = table[table["kind"] == "measured"].iloc[0]
    assert measured["epochs"] == 2 and measured["image_size"] == 64 and measured["profile"] == "ci"
    assert "demo" in measured["data"] and measured["accuracy_ci95"] == "0.300-0.700"
    assert set(experiments.comparison_table([])["study"]) == {"Study A", "Study B"}
    assert list(experiments.published_results("Study A")["accuracy"]) == [0.9027]
    with pytest.raises(WbcError, match="config.json"):
        experiments.measured_result(fake_ctx(tmp_path), tmp_path / "no-run", metrics)


def test_generalisation_gap():
    history = pd.DataFrame({"phase": [1, 1, 2], "accuracy": [0.5, 0.8, 0.9], "val_accuracy": [0.5, 0.6, 0.6]})
    gap = experiments.generalisation_gap(history)
    assert list(gap["gap"]) == pytest.approx([0.0, 0.2, 0.3]) and list(gap["epoch"]) == [1, 2, 3]


# ----------------------------------------------------------------------------- external validation


def two_source_manifest(root: Path) -> pd.DataFrame:
    rows = []
    layout = {
        ("PBC", "basophil"): 10,
        ("PBC", "eosinophil"): 10,
        ("PBC", "monocyte"): 10,
        ("LMU", "basophil"): 3,
        ("LMU", "eosinophil"): 3,
        ("LMU", "myeloblast"): 3,
        ("LMU", "monocyte"): 1,
    }
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
    # another seed or another manifest: rebuilt, never a stale split
    experiments.build_external_split(manifest, tmp_path / "ext", seed=1)
    assert "changed" in capsys.readouterr().out
    fewer = manifest.drop(index=0).reset_index(drop=True)  # one PBC basophil less
    assert manifest.loc[0, "source"] == "PBC"
    rebuilt = experiments.build_external_split(fewer, tmp_path / "ext", seed=1)
    assert "changed" in capsys.readouterr().out and len(pd.read_csv(rebuilt.external / "test.csv")) == 6
    assert sum(len(pd.read_csv(rebuilt.internal / f"{s}.csv")) for s in ("train", "val", "test")) == 19


def test_build_external_split_needs_two_shared_classes(tmp_path):
    manifest = two_source_manifest(tmp_path)
    with pytest.raises(WbcError, match="at least two"):
        experiments.build_external_split(manifest, tmp_path / "ext", min_images=4)


# ----------------------------------------------------------------------------- labels


def test_model_label_is_readable():
    assert experiments.model_label({"model": "resnet50", "weights": "none"}) == "ResNet50, random init"
    assert experiments.model_label({"model": "resnet50", "weights": "imagenet"}) == "ResNet50, ImageNet"
    assert experiments.model_label({"model": "cnn2"}) == "CNN2"
