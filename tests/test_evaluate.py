"""Evaluation of a run folder, prediction on new images, and the figures, on a tiny hand-made run."""

from __future__ import annotations

import io
import json

import cv2
import numpy as np
import pandas as pd
import pytest

from wbc.errors import WbcError

CLASSES = ["red", "green", "blue"]
SIZE = 16


def write_split(folder, seed: int = 0, per_class: int = 6):
    """A split folder of PNGs whose dominant colour is the class (3 classes, every split)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    for split in ("train", "val", "test"):
        rows = []
        for index, label in enumerate(CLASSES):
            for i in range(per_class):
                image = rng.integers(0, 120, size=(20, 24, 3), dtype=np.uint8)
                image[..., index] = rng.integers(120, 256, size=(20, 24), dtype=np.uint8)
                path = folder / "images" / f"{split}_{label}_{i}.png"
                path.parent.mkdir(exist_ok=True)
                cv2.imwrite(str(path), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                rows.append({"path": str(path), "label": label})
        pd.DataFrame(rows).to_csv(folder / f"{split}.csv", index=False)
    (folder / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return folder


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A run folder as `train` writes it: a small (untrained, seeded) CNN, config and history."""
    import keras

    root = tmp_path_factory.mktemp("eval")
    split_dir = write_split(root / "split")
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)  # raw pixels in, as every course model
    x = keras.layers.Conv2D(4, 3, activation="relu", name="conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)
    run = root / "run"
    run.mkdir()
    model.save(run / "model.keras")
    config = {"model": "tiny", "classes": CLASSES, "image_size": SIZE, "split_dir": str(split_dir), "phase1_epochs": 2}
    (run / "config.json").write_text(json.dumps(config))
    # history.csv as Keras' CSVLogger writes it: epochs counted from 0, no phase column
    pd.DataFrame(
        {
            "epoch": [0, 1, 2, 3],
            "accuracy": [0.4, 0.5, 0.6, 0.7],
            "loss": [1.2, 1.0, 0.8, 0.7],
            "val_accuracy": [0.4, 0.45, 0.5, 0.55],
            "val_loss": [1.1, 1.0, 0.9, 0.9],
        }
    ).to_csv(run / "history.csv", index=False)
    return run


@pytest.fixture(scope="module")
def evaluated(run_dir):
    from wbc.evaluate import evaluate_run

    return evaluate_run(run_dir, n_boot=200)


EXPECTED_FILES = {
    "metrics.json",
    "report.csv",
    "report.md",
    "confusion_counts.csv",
    "confusion_normalised.csv",
    "predictions.csv",
    "curves.png",
    "confusion.png",
    "confusion_normalised.png",
    "roc.png",
    "errors.png",
}


def test_evaluate_run_writes_every_file(run_dir, evaluated):
    out = run_dir / "evaluation" / "test"
    assert evaluated["out_dir"] == str(out)
    assert {p.name for p in out.iterdir()} == EXPECTED_FILES  # no temporary files left behind
    for name in EXPECTED_FILES:
        if name.endswith(".png"):
            assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (out / "report.md").read_text()
    assert all(c in report for c in CLASSES) and "classification report" in report
    assert list(pd.read_csv(out / "report.csv")["class"]) == CLASSES


@pytest.mark.filterwarnings("ignore:The y_prob values do not sum to one")
def test_metrics_json_agrees_with_predictions_csv(run_dir, evaluated):
    from sklearn.metrics import accuracy_score, f1_score, log_loss

    out = run_dir / "evaluation" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    pred = pd.read_csv(out / "predictions.csv")
    assert len(pred) == metrics["n_images"] == 18
    assert list(pred.columns[:5]) == ["path", "true_label", "predicted_label", "confidence", "correct"]
    probs = pred[[f"p_{c}" for c in CLASSES]].to_numpy()
    np.testing.assert_allclose(probs.sum(axis=1), 1, atol=1e-5)
    assert (pred["predicted_label"] == [CLASSES[i] for i in probs.argmax(1)]).all()
    assert metrics["accuracy"] == pytest.approx(accuracy_score(pred["true_label"], pred["predicted_label"]))
    assert metrics["macro_f1"] == pytest.approx(f1_score(pred["true_label"], pred["predicted_label"], average="macro"))
    y = [CLASSES.index(c) for c in pred["true_label"]]
    assert metrics["loss"] == pytest.approx(log_loss(y, probs, labels=range(3)), rel=1e-5)
    low, high = metrics["ci95"]["accuracy"]
    assert low <= metrics["accuracy"] <= high
    assert set(metrics["per_class"]) == set(CLASSES)
    assert {"precision", "recall", "specificity", "f1", "support", "auc"} <= set(metrics["per_class"]["red"])
    counts = pd.read_csv(out / "confusion_counts.csv").set_index("true_class")
    assert counts.to_numpy().sum() == 18 and list(counts.sum(axis=1)) == [6, 6, 6]
    assert np.trace(counts.to_numpy()) == pred["correct"].sum()


def test_predict_split_matches_the_model_on_the_same_pixels(run_dir):
    import keras

    from wbc.evaluate import predict_split
    from wbc.pipeline import load_raw_images

    table = predict_split(run_dir, split="val")
    model = keras.models.load_model(run_dir / "model.keras")
    expected = model.predict(load_raw_images(table["path"], SIZE).astype("float32"), verbose=0)  # raw pixels in
    np.testing.assert_allclose(table[[f"p_{c}" for c in CLASSES]].to_numpy(), expected, rtol=1e-5, atol=1e-6)


def test_external_split_folder_gets_its_own_evaluation_folder(run_dir, evaluated, tmp_path):
    from wbc.evaluate import evaluate_run

    other = write_split(tmp_path / "external", seed=5, per_class=3)
    result = evaluate_run(run_dir, split="test", split_dir=other, n_boot=50)
    assert result["out_dir"] == str(run_dir / "evaluation" / "external-test")
    assert result["n_images"] == 9 and result["split_dir"] == str(other.resolve())
    assert json.loads((run_dir / "evaluation" / "test" / "metrics.json").read_text())["n_images"] == 18


def test_predict_images_uses_the_training_pixels_and_ranks_top_k(run_dir):
    from wbc.evaluate import predict_images, predict_split

    images = run_dir.parent / "split" / "images"
    table = predict_images(run_dir, [images], top_k=2)
    assert len(table) == 54 and (table["error"] == "").all()
    probs = table[[f"p_{c}" for c in CLASSES]].to_numpy()
    assert (table["top1_prob"] >= table["top2_prob"]).all()
    np.testing.assert_allclose(table["top1_prob"], probs.max(axis=1))
    assert (table["top1_label"] == table["predicted_label"]).all()
    assert "top3_label" not in table.columns
    # OpenCV reading here, tf.data in predict_split: the model must see the same pixels.
    reference = predict_split(run_dir, split="test").set_index("path")
    mine = table.set_index("path").loc[reference.index]
    np.testing.assert_allclose(
        mine[[f"p_{c}" for c in CLASSES]], reference[[f"p_{c}" for c in CLASSES]], rtol=1e-4, atol=1e-5
    )


def test_predict_images_reads_tiff_and_reports_bad_files(run_dir, tmp_path):
    from wbc.evaluate import predict_images

    rgba = np.zeros((30, 30, 4), dtype=np.uint8)
    rgba[..., 2] = 200
    rgba[..., 3] = 255
    cv2.imwrite(str(tmp_path / "cell.tiff"), rgba)
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(WbcError, match="broken.jpg"):
        predict_images(run_dir, [tmp_path])
    table = predict_images(run_dir, [tmp_path], skip_unreadable=True)
    assert len(table) == 2
    assert table.set_index("path").loc[str(bad), "error"] != ""
    assert table.set_index("path").loc[str(tmp_path / "cell.tiff"), "predicted_label"] in CLASSES
    with pytest.raises(WbcError, match="no such file"):
        predict_images(run_dir, [tmp_path / "missing.png"])
    with pytest.raises(WbcError, match="run folder not found"):
        predict_images(tmp_path / "no-run", [tmp_path])


def test_gradcam_overlays_are_written_at_the_original_size(run_dir, tmp_path):
    from wbc.evaluate import classify_images, open_run
    from wbc.gradcam import save_overlays as gradcam_overlays

    model, config = open_run(run_dir)
    files = sorted((run_dir.parent / "split" / "images").glob("test_red_*.png"))[:2]
    table = classify_images(model, config, files)
    written = gradcam_overlays(model, config, table, tmp_path / "cams")
    assert [p.name for p in written] == [f.stem + "_gradcam.png" for f in files]
    assert cv2.imread(str(written[0])).shape == (20, 24, 3)
    again = gradcam_overlays(model, config, pd.concat([table, table]), tmp_path / "twice")  # same file twice
    assert [p.name for p in again][2:] == [f.stem + "_2_gradcam.png" for f in files]


# ----------------------------------------------------------------------------- figures


def _texts(fig) -> str:
    parts = [fig._suptitle.get_text() if fig._suptitle else ""]
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        parts += [t.get_text() for t in ax.get_xticklabels() + ax.get_yticklabels()]
        legend = ax.get_legend()
        if legend:
            parts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(parts)


def test_figures_have_titles_labels_and_class_names(tmp_path):
    from wbc.metrics import confusion
    from wbc.plots import plot_confusion_matrix, plot_history, plot_image_gallery, plot_roc

    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], 10)
    probs = rng.dirichlet([1, 1, 1], size=30)
    history = pd.DataFrame(
        {
            "phase": [1, 1, 2],
            "loss": [1, 0.8, 0.6],
            "val_loss": [1.1, 0.9, 0.8],
            "accuracy": [0.5, 0.6, 0.7],
            "val_accuracy": [0.4, 0.5, 0.6],
        }
    )
    fig = plot_history(history, path=tmp_path / "curves.png")
    text = _texts(fig)
    assert "loss" in text and "accuracy" in text and "validation" in text and "epoch" in text
    assert any(len(ax.lines) == 3 for ax in fig.axes)  # train, validation and the phase boundary
    fig = plot_confusion_matrix(confusion(y, probs.argmax(1), 3), CLASSES, path=tmp_path / "cm.png")
    assert all(c in _texts(fig) for c in CLASSES + ["true class", "predicted class"])
    fig = plot_roc(y, probs, CLASSES, path=tmp_path / "roc.png")
    text = _texts(fig)
    assert all(c in text for c in CLASSES + ["micro-average", "macro-average", "false positive rate"])
    fig = plot_roc(y[y != 2], probs[y != 2], CLASSES)
    assert "blue (not in the true labels)" in _texts(fig)
    images = rng.integers(0, 255, size=(5, 8, 8, 3), dtype=np.uint8)
    fig = plot_image_gallery(images, [f"img {i}" for i in range(5)], ncols=2, title="Gallery")
    assert "img 4" in _texts(fig) and "Gallery" in _texts(fig)
    assert "no images" in "".join(t.get_text() for ax in plot_image_gallery([], []).axes for t in ax.texts)
    with pytest.raises(WbcError, match="caption"):
        plot_image_gallery(images, ["one"])
    for name in ("curves.png", "cm.png", "roc.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"


def test_figures_fit_a_laptop_screen_and_legends_leave_the_data_free(tmp_path):
    from PIL import Image

    from wbc.metrics import confusion
    from wbc.plots import (
        MAX_FIGURE_WIDTH,
        SAVE_DPI,
        annotation_fontsize,
        plot_confusion_matrix,
        plot_image_gallery,
        plot_roc,
    )

    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, size=(12, 8, 8, 3), dtype=np.uint8)
    for ncols, bar in ((4, None), (6, None), (8, "jet")):
        fig = plot_image_gallery(images, [f"img {i}" for i in range(12)], ncols=ncols, colorbar_cmap=bar)
        assert fig.get_figwidth() <= MAX_FIGURE_WIDTH + 1e-9, ncols
    fig = plot_image_gallery(images, [f"img {i}" for i in range(12)], ncols=6, path=tmp_path / "g.png")
    assert Image.open(tmp_path / "g.png").size[0] <= MAX_FIGURE_WIDTH * SAVE_DPI + 40  # bbox "tight" adds a margin
    y = np.repeat([0, 1, 2], 10)
    probs = rng.dirichlet([1, 1, 1], size=30)
    fig = plot_roc(y, probs, CLASSES)
    fig.savefig(io.BytesIO(), format="png")
    ax = fig.axes[0]
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # beside the axes, over no curve
    assert annotation_fontsize(10) >= 11 > annotation_fontsize(13) >= annotation_fontsize(40) == 7
    fig = plot_confusion_matrix(confusion(y, probs.argmax(1), 3), CLASSES)
    assert {t.get_fontsize() for t in fig.axes[0].texts} == {annotation_fontsize(3)}


def test_legend_outside_moves_every_axes_legend_beside_the_panels():
    from matplotlib.figure import Figure

    from wbc.plots import legend_outside

    fig = Figure(figsize=(8, 3), layout="constrained")
    left, right = fig.subplots(1, 2)
    for ax in (left, right):
        ax.plot([0, 1], [0, 1], label="red")
        ax.plot([0, 1], [1, 0], label="blue")
    left.legend(title="channel")
    right.legend()
    assert legend_outside(fig) is fig
    assert left.get_legend() is None and right.get_legend() is None
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == ["red", "blue"]  # once each, not per panel
    assert legend.get_title().get_text() == "channel"
    fig.savefig(io.BytesIO(), format="png")  # lays the figure out (a bare Figure's canvas.draw does not)
    assert legend.get_window_extent().x0 >= right.get_window_extent().x1  # to the right of the data
    empty = Figure()
    empty.subplots()
    assert legend_outside(empty).legends == []  # nothing to move: nothing added


def test_read_model_input_gives_raw_images_the_training_preprocessing(tmp_path):
    from wbc.evaluate import read_model_input
    from wbc.preprocess import preprocess_manifest, read_image, resize_image

    rng = np.random.default_rng(0)
    raw = tmp_path / "raw" / "wide.png"
    raw.parent.mkdir()
    cv2.imwrite(str(raw), rng.integers(0, 255, (40, 80, 3), dtype=np.uint8))
    settings = {"size": 48, "mode": "pad", "colour": None}
    padded = read_model_input(raw, 16, settings)
    stretched = read_model_input(raw, 16)
    assert not np.array_equal(padded, stretched)  # letterboxed vs stretched: the settings matter
    manual = resize_image(read_image(raw), 48, "pad")
    cv2.imwrite(str(tmp_path / "manual.png"), cv2.cvtColor(manual, cv2.COLOR_RGB2BGR))
    assert np.array_equal(padded, read_model_input(tmp_path / "manual.png", 16))
    # an image a preprocess run wrote already carries the settings: not applied twice
    processed, _ = preprocess_manifest(
        pd.DataFrame({"path": [str(raw)], "label": ["x"]}),
        tmp_path / "out",
        size=48,
        mode="pad",
        jobs=1,
        progress=False,
    )
    out = processed["path"].iloc[0]
    assert np.array_equal(read_model_input(out, 16, settings), read_model_input(out, 16))


def test_read_model_input_crops_and_normalises_a_raw_image_as_the_run_did(tmp_path):
    """A run trained on cropped, Reinhard-normalised images: a raw image from another lab, placed
    off-centre, reaches the model cropped around its cell and normalised; no cell -> an error naming it."""
    from test_cellcrop import BACKGROUND, smear

    from wbc.evaluate import read_model_input
    from wbc.preprocess import apply_preprocess_settings

    settings = {"size": 48, "mode": "stretch", "colour": "reinhard", "crop_cell": True}
    image = smear((300, 220), 30)  # off-centre, in a 400 x 300 field
    raw = tmp_path / "other_lab.png"
    cv2.imwrite(str(raw), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    pixels = read_model_input(raw, 24, settings)
    expected = apply_preprocess_settings(image, settings)
    cv2.imwrite(str(tmp_path / "expected.png"), cv2.cvtColor(expected, cv2.COLOR_RGB2BGR))
    assert np.abs(pixels.astype(int) - read_model_input(tmp_path / "expected.png", 24)).max() <= 1
    centre = pixels[8:16, 8:16].astype(int)
    assert (centre[..., 2] - centre[..., 1]).mean() > 40  # the violet nucleus fills the middle of the input
    assert not np.array_equal(pixels, read_model_input(raw, 24))  # without the settings: the whole field
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((100, 100, 3), BACKGROUND[::-1], np.uint8))
    with pytest.raises(WbcError, match="blank.png: no white cell found"):
        read_model_input(blank, 24, settings)
