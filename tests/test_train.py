"""Training: loss goes down, run folders are complete and reload identically, CLI and errors."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from test_pipeline import CLASSES, write_toy_split
from wbc.errors import WbcError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # Keras copying weights


@pytest.fixture(scope="module")
def toy_split(tmp_path_factory) -> Path:
    return write_toy_split(tmp_path_factory.mktemp("toy-train"), per_class=12)


@pytest.fixture(scope="module")
def cnn1_run(toy_split, tmp_path_factory) -> Path:
    from wbc.train import train_model

    out = tmp_path_factory.mktemp("runs") / "cnn1"
    return train_model(toy_split, "cnn1", out, image_size=32, epochs=2, batch_size=8,
                       lr_schedule="cosine", class_weights=True, verbose=0)


def test_a_few_steps_lower_the_loss(toy_split):
    import keras

    from wbc.models import build_model
    from wbc.pipeline import make_dataset
    from wbc.train import set_seeds

    set_seeds(0)
    x, y = next(iter(make_dataset(toy_split / "train.csv", CLASSES, 32, 64)))
    model = build_model("cnn2", len(CLASSES), 32)
    model.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy")
    before = float(model.evaluate(x, y, verbose=0))
    for _ in range(15):
        model.train_on_batch(x, y)
    assert float(model.evaluate(x, y, verbose=0)) < 0.8 * before


@pytest.mark.slow
def test_run_folder_is_complete_and_reloads_identically(cnn1_run, toy_split):
    from wbc.models import build_model
    from wbc.pipeline import load_images, load_split
    from wbc.train import load_run

    assert {"model.keras", "history.csv", "config.json", "train.log", "best.weights.h5"} <= {
        p.name for p in cnn1_run.iterdir()}
    history = pd.read_csv(cnn1_run / "history.csv")
    assert list(history["epoch"]) == [1, 2] and set(history["phase"]) == {1}
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(history.columns)
    assert history["learning_rate"].iloc[1] < history["learning_rate"].iloc[0]  # cosine decay
    model, config = load_run(cnn1_run)
    assert config["classes"] == CLASSES and config["preprocessing"] == "unit" and config["image_size"] == 32
    assert config["parameters"]["lr_schedule"] == "cosine" and config["seed"] == 0
    assert set(config["split_sha256"]) == {"train.csv", "val.csv", "test.csv", "classes.txt"}
    assert {"python", "tensorflow", "keras", "numpy"} <= set(config["versions"])
    assert config["images_per_s"] > 0 and config["elapsed_s"] > 0 and config["device"]
    assert config["best_val_accuracy"] == pytest.approx(history["val_accuracy"].max())
    assert "epoch 2" in (cnn1_run / "train.log").read_text()
    # the saved model is the best checkpoint, and predicts exactly like it
    x = load_images(load_split(toy_split, "test")["path"], 32, "unit")
    reference = build_model("cnn1", len(CLASSES), 32, weights=cnn1_run / "best.weights.h5")
    np.testing.assert_allclose(model.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    again, _ = load_run(cnn1_run)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.slow
def test_complete_run_is_not_overwritten(cnn1_run, toy_split):
    from wbc.train import train_model

    stamp = (cnn1_run / "config.json").stat().st_mtime_ns
    with pytest.raises(WbcError, match="already holds a complete run.*--overwrite"):
        train_model(toy_split, "cnn1", cnn1_run, image_size=32, epochs=1, verbose=0)
    assert (cnn1_run / "config.json").stat().st_mtime_ns == stamp


def test_load_run_errors(tmp_path):
    from wbc.train import load_run

    with pytest.raises(WbcError, match="run folder not found"):
        load_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "history.csv").write_text("epoch\n1\n")
    with pytest.raises(WbcError, match="incomplete run .*model.keras"):
        load_run(tmp_path / "half")


def test_train_model_argument_errors(toy_split, tmp_path):
    from wbc.train import train_model

    with pytest.raises(WbcError, match="split folder not found"):
        train_model(tmp_path / "missing", "cnn1", tmp_path / "run")
    with pytest.raises(WbcError, match="unknown model"):
        train_model(toy_split, "alexnet", tmp_path / "run")
    with pytest.raises(WbcError, match="resnet50 only"):
        train_model(toy_split, "cnn1", tmp_path / "run", fine_tune_epochs=2)
    with pytest.raises(WbcError, match="not both"):
        train_model(toy_split, "cnn1", tmp_path / "run", reduce_lr=True, lr_schedule="cosine")
    assert not (tmp_path / "run").exists()  # nothing written for a refused run


def test_balanced_class_weights():
    from wbc.train import _class_weights

    weights = _class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights[1] == pytest.approx(3 * weights[0]) and weights[2] == 1.0  # class 2 absent


def test_configure_device_on_cpu():
    import keras
    import tensorflow as tf

    from wbc.train import configure_device

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("CPU-only behaviour")
    strategy = configure_device(mixed_precision=True)
    assert strategy.num_replicas_in_sync == 1
    assert keras.mixed_precision.global_policy().name == "float32"


@pytest.mark.slow
def test_resnet50_two_phases(toy_split, tmp_path):
    from wbc.train import train_model

    run = train_model(toy_split, "resnet50", tmp_path / "resnet", weights="none", image_size=32,
                      epochs=1, fine_tune_epochs=1, batch_size=16, verbose=0)
    history = pd.read_csv(run / "history.csv")
    assert list(history["phase"]) == [1, 2] and list(history["epoch"]) == [1, 2]
    assert history["learning_rate"].tolist() == pytest.approx([1e-3, 1e-5])
    config = json.loads((run / "config.json").read_text())
    assert config["preprocessing"] == "resnet50" and config["weights"] == "none"


@pytest.mark.slow
def test_cli_trains_one_epoch(toy_split, tmp_path, capsys):
    from wbc.cli import main

    out = tmp_path / "cli-run"
    code = main(["train", "--split-dir", str(toy_split), "--model", "cnn1", "--image-size", "32",
                 "--epochs", "1", "--batch-size", "8", "--no-augment", "--quiet", "--out", str(out)])
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["parameters"]["augment"] is False and config["epochs_run"] == 1
    assert (out / "model.keras").is_file()
    assert main(["train", "--split-dir", str(toy_split), "--model", "cnn1", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_bad_arguments(tmp_path, capsys):
    from wbc.cli import main

    assert main(["train", "--split-dir", str(tmp_path / "nowhere"), "--model", "cnn1",
                 "--out", str(tmp_path / "run")]) == 2
    assert "nowhere: split folder not found" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "--split-dir", str(tmp_path), "--model", "lenet", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "invalid choice: 'lenet'" in capsys.readouterr().err
