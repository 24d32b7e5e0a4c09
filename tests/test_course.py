"""wbc.course: setup_notebook and the ensure_* helpers that let every notebook run alone."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest

from wbc import config, course
from wbc.config import PBC_DIRNAME
from wbc.errors import WbcError


@pytest.fixture
def ctx(tmp_path, monkeypatch, demo_root):
    """A ci-profile context on the small demo dataset, with outputs in a temporary folder."""
    monkeypatch.setenv("WBC_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("WBC_DATA_DIR", str(demo_root))
    return course.setup_notebook("Test notebook", profile="ci", verbose=False)


def test_setup_notebook_describes_the_run(ctx, demo_root, tmp_path, capsys):
    assert ctx.datasets == ("PBC", "LMU", "ALL") and not ctx.is_demo
    assert ctx.data_dir == demo_root and ctx.work_dir.is_relative_to(tmp_path / "out")
    assert ctx.profile.name == "ci" and ctx.notebook == "test_notebook"
    loud = course.setup_notebook("Loud", profile="ci", image_size=None, epochs=3)
    assert loud.profile.epochs == 3 and loud.profile.image_size == ctx.profile.image_size
    printed = capsys.readouterr().out
    assert "TensorFlow" in printed and "Profile: ci" in printed and "DEMO DATA" not in printed


def test_setup_notebook_refuses_unknown_settings(ctx):
    with pytest.raises(WbcError, match="unknown setting"):
        course.setup_notebook(profile="ci", verbose=False, epoch=3)
    with pytest.raises(WbcError, match="unknown dataset"):
        course.setup_notebook(profile="ci", verbose=False, dataset="wbc11")


def test_ensure_splits_builds_the_chain_then_reuses_it(ctx, capsys):
    split_dir = course.ensure_splits(ctx, "wbc10")
    parts = {name: pd.read_csv(split_dir / f"{name}.csv") for name in ("train", "val", "test")}
    classes = (split_dir / "classes.txt").read_text().split()
    labels = set().union(*(set(p["label"]) for p in parts.values()))
    assert classes == sorted(labels) and all(len(p) for p in parts.values())
    processed = pd.read_csv(ctx.work_dir / "processed" / "wbc10" / "manifest.csv")
    assert sum(len(p) for p in parts.values()) <= len(processed)
    assert (split_dir / "audit.csv").is_file()

    stamp = (split_dir / "train.csv").stat().st_mtime_ns
    capsys.readouterr()
    assert course.ensure_splits(ctx, "wbc10") == split_dir
    out = capsys.readouterr().out
    assert "splits wbc10: reusing" in out and "built" not in out
    assert (split_dir / "train.csv").stat().st_mtime_ns == stamp


def test_a_changed_setting_rebuilds_what_depends_on_it(ctx, capsys):
    full = pd.read_csv(course.ensure_manifest(ctx, "wbc10"))
    small_ctx = course.setup_notebook(profile="ci", verbose=False, cap=2)
    capsys.readouterr()
    small = pd.read_csv(course.ensure_manifest(small_ctx, "wbc10"))
    assert "changed" in capsys.readouterr().out
    assert small.groupby("label").size().max() == 2 < full.groupby("label").size().max()
    excluded = pd.read_csv(small_ctx.work_dir / "manifests" / "wbc10-excluded.csv")
    assert excluded["reason"].str.startswith("over the cap").any()


def test_rebuild_true_rebuilds(ctx, capsys):
    course.ensure_manifest(ctx, "lmu")
    capsys.readouterr()
    course.ensure_manifest(ctx, "lmu", rebuild=True)
    assert "manifest lmu: built" in capsys.readouterr().out


def test_all4_keeps_the_original_version_only(ctx):
    all4 = pd.read_csv(course.ensure_manifest(ctx, "all4"))
    everything = pd.read_csv(ctx.work_dir / "manifests" / "all.csv")
    assert set(all4["version"]) == {"Original"} and set(everything["version"]) == {"Original", "Segmented"}
    assert len(all4) == (everything["version"] == "Original").sum()


def test_missing_source_is_explained(tmp_path, monkeypatch, demo_root, capsys):
    only_pbc = tmp_path / "only-pbc"
    shutil.copytree(demo_root / PBC_DIRNAME, only_pbc / PBC_DIRNAME)
    monkeypatch.setenv("WBC_OUTPUT_DIR", str(tmp_path / "out"))
    ctx = course.setup_notebook(profile="ci", data_dir=only_pbc, verbose=False)
    assert ctx.datasets == ("PBC",) and not ctx.has("all4")
    with pytest.raises(WbcError, match="ALL_Kaggle.*download all"):
        course.ensure_manifest(ctx, "all4")
    wbc10 = pd.read_csv(course.ensure_manifest(ctx, "wbc10"))
    assert set(wbc10["source"]) == {"PBC"} and "myeloblast" not in set(wbc10["label"])
    assert "AML-Cytomorphology_LMU/ is not in" in capsys.readouterr().out


def test_demo_data_is_generated_once_and_redone_when_incomplete(tmp_path, monkeypatch):
    monkeypatch.setenv("WBC_OUTPUT_DIR", str(tmp_path))
    quiet = lambda *a, **k: None  # noqa: E731
    root = course.ensure_demo_data(1, say=quiet)
    marker = root / course.DEMO_MARKER
    assert json.loads(marker.read_text()) == {"per_class": 1, "seed": 0}
    stamp = marker.stat().st_mtime_ns
    assert course.ensure_demo_data(1, say=quiet) == root and marker.stat().st_mtime_ns == stamp
    marker.unlink()  # as if the generation had been interrupted
    course.ensure_demo_data(1, say=quiet)
    assert marker.is_file()
    other = course.ensure_demo_data(2, say=quiet)  # another size (another profile): a folder of its own
    assert other != root and json.loads((other / course.DEMO_MARKER).read_text())["per_class"] == 2
    assert json.loads(marker.read_text())["per_class"] == 1  # the first size is kept beside it
    summary = course.folder_summary(other)
    assert summary.loc[summary["folder"].str.endswith("LMU/BAS"), "files"].tolist() == [2]
    assert config.data_tag(root) == config.data_tag(other) == "demo"
    (other / course.DEMO_MARKER).write_text(json.dumps({"per_class": 2, "seed": 1}))  # another seed: redone
    course.ensure_demo_data(2, say=quiet)
    assert json.loads((other / course.DEMO_MARKER).read_text()) == {"per_class": 2, "seed": 0}


def test_folder_summary_counts_files(demo_root):
    summary = course.folder_summary(demo_root)
    assert set(summary["dataset"]) == {"PBC", "LMU", "ALL"}
    bas = summary[summary["folder"] == "AML-Cytomorphology_LMU/BAS"]["files"].item()
    assert bas == len(os.listdir(demo_root / "AML-Cytomorphology_LMU" / "BAS"))


def test_save_figure_writes_png_under_the_notebook_name(ctx):
    from matplotlib.figure import Figure

    fig = Figure()
    fig.subplots().plot([0, 1], [1, 0])
    path = course.save_figure(fig, "line")
    assert path == ctx.figures_dir / "test_notebook" / "line.png"
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_eda_tables_and_figures_on_the_demo_manifest(ctx, tmp_path):
    from wbc import eda

    wbc10 = pd.read_csv(course.ensure_manifest(ctx, "wbc10"), keep_default_na=False)
    counts = eda.class_counts(wbc10, by="source")
    assert counts.loc["total", "total"] == len(wbc10) and set(counts.columns) == {"PBC", "LMU", "total"}
    broken = wbc10.head(3).copy()
    broken.loc[broken.index[0], "path"] = str(tmp_path / "missing.jpg")
    stats, unreadable = eda.image_stats(broken, per_group=None)
    assert len(stats) == 2 and unreadable["path"].tolist() == [str(tmp_path / "missing.jpg")]
    sizes = eda.image_size_table(eda.image_stats(wbc10, per_group=2)[0])
    assert set(sizes.loc[sizes["source"] == "LMU", "channels"]) == {4}  # the RGBA TIFFs are reported as such
    hist = eda.colour_histograms(wbc10, per_group=2, bins=8)
    assert np.allclose(hist.groupby(["source", "channel"])["fraction"].sum(), 1.0)
    fig = eda.plot_preview_grid(wbc10, per_group=1)
    assert len([ax for ax in fig.axes if ax.images]) == wbc10.groupby(["label", "source"]).ngroups


def test_duplicate_table_finds_the_image_filed_under_two_labels(ctx):
    from wbc import eda

    pbc = pd.read_csv(course.ensure_manifest(ctx, "pbc"), keep_default_na=False)
    dup = eda.duplicate_table(pbc)
    two_labels = dup[dup["labels"].str.contains(" / ")]
    assert len(two_labels) == 2 and set(two_labels["label"]) == {"eosinophil", "neutrophil"}


def test_class_distribution_follows_table_one_order_with_the_legend_outside(ctx):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from wbc import eda, merge
    from wbc.labels import WBC10_CLASSES

    wbc10 = pd.read_csv(course.ensure_manifest(ctx, "wbc10"), keep_default_na=False)
    fig = eda.plot_class_distribution(wbc10, by="source")
    ax = fig.axes[0]
    shown = [t.get_text() for t in ax.get_yticklabels()]
    assert shown == [c for c in merge.table_one(wbc10)["class"] if c != "total"]
    assert shown == [c for c in WBC10_CLASSES if c in shown]
    FigureCanvasAgg(fig).draw()
    legend, plot = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.x0 >= plot.x1  # right of the bars, never on top of them
    assert eda.class_order(["Pro", "zeta", "Benign", "basophil"]) == ["basophil", "Benign", "Pro", "zeta"]


def test_suptitles_clear_the_panel_titles():
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    from wbc.plots import plot_image_gallery

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(8, 16, 16, 3), dtype=np.uint8)
    captions = [f"neutrophil_segmented processed 96x96 number {i}" for i in range(8)]
    fig = plot_image_gallery(images, captions, ncols=4, title="Raw vs processed")
    canvas = FigureCanvasAgg(fig)
    canvas.draw()
    renderer = canvas.get_renderer()
    top = fig._suptitle.get_window_extent(renderer)
    titles = [ax.title.get_window_extent(renderer) for ax in fig.axes if ax.images]
    assert all(t.y1 <= top.y0 for t in titles)  # the suptitle sits above every caption
    row = sorted((t for t in titles if abs(t.y0 - titles[0].y0) < 1), key=lambda t: t.x0)
    assert all(a.x1 <= b.x0 for a, b in zip(row, row[1:]))  # neighbouring captions do not touch


def test_heatmap_colorbar_for_gradcam_overlays():
    from wbc.plots import add_heatmap_colorbar, plot_image_gallery

    images = np.zeros((3, 8, 8, 3), dtype=np.uint8)
    fig = plot_image_gallery(images, ["a", "b", "c"], ncols=3, colorbar_cmap="jet")
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1 and "Grad-CAM" in bars[0].get_ylabel()
    assert len([ax for ax in plot_image_gallery(images, ["a", "b", "c"]).axes if ax.get_label() == "<colorbar>"]) == 0
    bar = add_heatmap_colorbar(plot_image_gallery(images, ["a", "b", "c"]), label="importance")
    assert bar.mappable.get_cmap().name == "jet" and bar.ax.get_ylabel() == "importance"


# ----------------------------------------------------------------------------- training runs


def test_ensure_run_trains_once_then_reuses_and_retrains_on_change(ctx, capsys):
    split_dir = course.ensure_splits(ctx, "all4")
    cfg = course.baseline_config(ctx, "cnn1", epochs=1, image_size=32)
    assert cfg.epochs == 1 and cfg.weights == "none" and cfg.seed == ctx.seed
    first = course.ensure_run(ctx, "all4_cnn1", cfg, split_dir)
    assert "training cnn1" in capsys.readouterr().out
    stamp = (first / "model.keras").stat().st_mtime_ns
    assert course.ensure_run(ctx, "all4_cnn1", cfg, split_dir) == first
    assert "reusing" in capsys.readouterr().out and (first / "model.keras").stat().st_mtime_ns == stamp
    other = course.ensure_run(
        ctx, "all4_cnn1", course.baseline_config(ctx, "cnn1", epochs=1, image_size=32, lr=2e-3), split_dir
    )
    assert other != first and (first / "model.keras").stat().st_mtime_ns == stamp  # the first is kept


def test_training_code_follows_the_notebook_definitions(ctx):
    from wbc.runtime import lessons

    library = course.training_code("cnn1")
    assert course.training_code("cnn1", {"build_cnn1": lessons().build_cnn1}) == library
    namespace = {"__name__": "__main__"}
    exec("def build_cnn1(n_classes, image_size):\n    return None\n", namespace)
    assert course.training_code("cnn1", namespace) != library  # an edited builder: another run
    assert course.training_code("cnn2") != library


def test_a_notebook_run_folder_is_the_one_ensure_run_reuses(ctx):
    split_dir = course.ensure_splits(ctx, "all4")
    cfg = course.baseline_config(ctx, "cnn2", epochs=1, image_size=32)
    folder = course.run_folder(ctx, "all4_cnn2", cfg, split_dir, course.training_code("cnn2", {}))
    assert folder.parent == ctx.work_dir / "runs" and folder.name.startswith("all4_cnn2-")
    changed = course.run_folder(ctx, "all4_cnn2", cfg, split_dir, "other-code")
    assert changed != folder


def test_main_run_config_follows_the_profile_and_resolves_weights(ctx, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))  # no cached ImageNet file
    from wbc import models

    monkeypatch.setattr(models, "fetch_imagenet_weights", lambda: (_ for _ in ()).throw(WbcError("offline")))
    cfg = course.main_run_config(ctx, epochs=None, patience=3)
    assert (cfg.model, cfg.weights, cfg.epochs, cfg.patience) == ("resnet50", "none", ctx.profile.epochs, 3)
    assert cfg.fine_tune_epochs == ctx.profile.fine_tune_epochs and cfg.image_size == ctx.profile.image_size


def test_readme_profile_table_matches_config():
    """The README's profile table states what lib/wbc/config.py defines (image size, epochs)."""
    import re
    from pathlib import Path

    from wbc.config import PROFILES

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    rows = {
        m[0]: m[1:]
        for m in re.findall(r"^\| `(\w+)` \|[^|]*\|[^|]*\| (\d+)[^|]*\| (\d+) \+ (\d+)[^|]*\| (\d+)", readme, re.M)
    }
    assert set(rows) == set(PROFILES), f"README profile rows {sorted(rows)}"
    for name, (size, epochs, fine, cnn) in rows.items():
        prof = PROFILES[name]
        assert (int(size), int(epochs), int(fine), int(cnn)) == (
            prof.image_size,
            prof.epochs,
            prof.fine_tune_epochs,
            prof.cnn_epochs,
        ), f"README row {name!r} disagrees with config.PROFILES"


def test_a_stain_augmented_run_is_keyed_on_the_stain_layer(ctx, monkeypatch):
    """Editing StainJitter (notebook 13, `make lib`) must not reuse a stain-augmented run."""
    from dataclasses import replace

    from wbc.runtime import lessons

    split_dir = course.ensure_splits(ctx, "all4")
    plain = course.baseline_config(ctx, "cnn1", epochs=1, image_size=32)
    jitter = replace(plain, stain_augment=True)
    code = course.training_code("cnn1")
    first = course.run_folder(ctx, "r", jitter, split_dir, code)
    assert first != course.run_folder(ctx, "r", plain, split_dir, code)

    class StainJitter(lessons().StainJitter):  # an edited layer
        def call(self, images, training=None):
            return images

    monkeypatch.setattr(lessons(), "StainJitter", StainJitter)
    assert course.run_folder(ctx, "r", jitter, split_dir, code) != first
