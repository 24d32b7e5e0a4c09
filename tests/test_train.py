"""Training: TrainConfig, train_model run folders (complete, reloadable, refused when diverged),
the two-phase fit, the device set-up, the command line."""

from __future__ import annotations

import json
import math
import warnings
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
    from wbc.train import TrainConfig, train_model

    out = tmp_path_factory.mktemp("runs") / "cnn1"
    cfg = TrainConfig(model="cnn1", image_size=32, epochs=2, batch_size=8, lr_schedule="cosine", class_weights=True)
    return train_model(toy_split, out, cfg, verbose=0)


def test_train_config_check_refuses_unusable_settings():
    from wbc.train import TrainConfig

    TrainConfig(model="cnn1").check(n_classes=2)  # fine
    for lr in (math.nan, -1, 0, math.inf, "1e-3", True):
        with pytest.raises(WbcError, match="lr must be a finite number above 0"):
            TrainConfig(lr=lr).check()
        with pytest.raises(WbcError, match="fine_tune_lr must be a finite number above 0"):
            TrainConfig(fine_tune_lr=lr).check()
    for n in (0, 1):
        with pytest.raises(WbcError, match="at least two"):
            TrainConfig().check(n_classes=n)
    with pytest.raises(WbcError, match="unknown model"):
        TrainConfig(model="alexnet").check()
    with pytest.raises(WbcError, match="at least 1"):
        TrainConfig(epochs=0).check()
    with pytest.raises(WbcError, match="resnet50 only"):
        TrainConfig(model="cnn1", fine_tune_epochs=2).check()
    with pytest.raises(WbcError, match="not both"):
        TrainConfig(model="cnn1", reduce_lr=True, lr_schedule="cosine").check()
    with pytest.raises(WbcError, match="unknown lr_schedule"):
        TrainConfig(lr_schedule="step").check()
    assert TrainConfig(model_options=(("dropout", 0.3),)).as_dict()["model_options"] == {"dropout": 0.3}
    # stain_augment enters the settings (and so the run keys) only when on: older runs keep their keys
    assert "stain_augment" not in TrainConfig().as_dict()
    assert TrainConfig(stain_augment=True).as_dict()["stain_augment"] is True


def test_a_few_steps_lower_the_loss(toy_split):
    import keras

    from wbc.models import build_model
    from wbc.pipeline import split_dataset
    from wbc.train import set_seeds

    set_seeds(0)
    x, y = next(iter(split_dataset(toy_split / "train.csv", CLASSES, 32, 64)))
    assert x.dtype.name == "float32" and float(x.numpy().max()) > 1  # raw pixels: the model scales them
    model = build_model("cnn2", len(CLASSES), 32)
    model.compile(keras.optimizers.Adam(3e-3), "categorical_crossentropy")
    before = float(model.evaluate(x, y, verbose=0))
    for _ in range(15):
        model.train_on_batch(x, y)
    assert float(model.evaluate(x, y, verbose=0)) < 0.8 * before


def test_cosine_schedule_with_warmup():
    import keras

    from wbc.train import _learning_rate

    assert _learning_rate(1e-3, None, 100, 10) == 1e-3
    schedule = _learning_rate(1e-3, "cosine", 100, 10)
    assert isinstance(schedule, keras.optimizers.schedules.CosineDecay)
    values = [float(schedule(step)) for step in (0, 10, 55, 100)]
    assert values[0] == pytest.approx(1e-4) and values[1] == pytest.approx(1e-3)  # warm-up from lr / 10 to lr
    assert values[1] > values[2] > values[3]  # then decay
    plain = _learning_rate(1e-3, "cosine", 100, 0)
    assert float(plain(0)) == pytest.approx(1e-3) and float(plain(100)) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.slow
def test_run_folder_is_complete_and_reloads_identically(cnn1_run, toy_split):
    from wbc import runs
    from wbc.models import build_model
    from wbc.pipeline import load_raw_images, load_split

    assert {"model.keras", "history.csv", "config.json", "train.log", "best.weights.h5"} <= {
        p.name for p in cnn1_run.iterdir()
    }
    assert runs.is_complete(cnn1_run)
    raw = pd.read_csv(cnn1_run / "history.csv")  # Keras' CSVLogger: epochs counted from 0
    assert list(raw["epoch"]) == [0, 1]
    assert {"loss", "accuracy", "val_loss", "val_accuracy"} <= set(raw.columns)
    history = runs.read_history(cnn1_run)  # from 1, with the phase
    assert list(history["epoch"]) == [1, 2] and set(history["phase"]) == {1}
    model, config = runs.load_run(cnn1_run)
    assert config["classes"] == CLASSES and config["image_size"] == 32 and "preprocessing" not in config
    assert config["settings"]["lr_schedule"] == "cosine" and config["settings"]["class_weights"] is True
    assert config["seed"] == 0 and config["weights"] is None
    assert set(config["split_sha256"]) == {"train.csv", "val.csv", "test.csv", "classes.txt"}
    assert {"python", "tensorflow", "keras", "numpy"} <= set(config["versions"])
    assert config["images_per_s"] > 0 and config["elapsed_s"] > 0 and config["device"]
    assert config["precision_policy"] == "float32"
    assert config["best_val_accuracy"] == pytest.approx(history["val_accuracy"].max())
    assert config["best_phase"] == 1 and config["epochs_run"] == 2 and config["phase1_epochs"] == 2
    assert history.loc[history["epoch"] == config["best_epoch"], "val_accuracy"].item() == pytest.approx(
        config["best_val_accuracy"]
    )
    # the optimizer ran the cosine schedule
    assert model.optimizer.get_config()["learning_rate"]["class_name"] == "CosineDecay"
    assert "best val_accuracy" in (cnn1_run / "train.log").read_text()
    # the saved model is the best checkpoint, takes raw pixels, and predicts exactly like it
    x = load_raw_images(load_split(toy_split, "test")["path"], 32).astype("float32")
    reference = build_model("cnn1", len(CLASSES), 32, weights=cnn1_run / "best.weights.h5")
    np.testing.assert_allclose(model.predict(x, verbose=0), reference.predict(x, verbose=0), rtol=1e-5, atol=1e-6)
    again, _ = runs.load_run(cnn1_run)
    np.testing.assert_allclose(again.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-6)


@pytest.mark.slow
def test_complete_run_is_not_overwritten(cnn1_run, toy_split):
    from wbc import runs
    from wbc.train import TrainConfig, train_model

    stamp = (cnn1_run / "config.json").stat().st_mtime_ns
    with pytest.raises(WbcError, match="already holds a complete run.*--overwrite"):
        train_model(toy_split, cnn1_run, TrainConfig(model="cnn1", image_size=32, epochs=1), verbose=0)
    with pytest.raises(WbcError, match="already holds a complete run"):
        runs.start_run(cnn1_run)
    assert (cnn1_run / "config.json").stat().st_mtime_ns == stamp


def test_start_run_clears_an_unfinished_run(tmp_path):
    from wbc import runs

    run = tmp_path / "half"
    run.mkdir()
    (run / "history.csv").write_text("epoch,loss\n0,1.0\n")
    (run / "evaluation").mkdir()
    assert runs.start_run(run) == run and not (run / "history.csv").exists() and not (run / "evaluation").exists()
    (tmp_path / "file").write_text("x")
    with pytest.raises(WbcError, match="not a folder"):
        runs.start_run(tmp_path / "file")


def test_load_run_and_read_history_errors(tmp_path):
    from wbc import runs

    with pytest.raises(WbcError, match="run folder not found"):
        runs.load_run(tmp_path / "nope")
    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "history.csv").write_text("epoch,val_accuracy\n0,0.5\n1,0.6\n2,0.4\n")
    with pytest.raises(WbcError, match="incomplete run .*config.json"):
        runs.load_run(tmp_path / "half")
    history = runs.read_history(tmp_path / "half", phase1_epochs=2)
    assert list(history["epoch"]) == [1, 2, 3] and list(history["phase"]) == [1, 1, 2]
    assert runs.best_epoch(history, 2) == {
        "best_epoch": 2,
        "best_phase": 1,
        "best_val_accuracy": 0.6,
        "epochs_run": 3,
        "phase1_epochs": 2,
    }
    with pytest.raises(WbcError, match="missing"):
        runs.read_history(tmp_path / "nope")


def test_train_model_argument_errors(toy_split, tmp_path):
    from wbc.train import TrainConfig, train_model

    with pytest.raises(WbcError, match="split folder not found"):
        train_model(tmp_path / "missing", tmp_path / "run", TrainConfig(model="cnn1"))
    with pytest.raises(WbcError, match="unknown model"):
        train_model(toy_split, tmp_path / "run", TrainConfig(model="alexnet"))
    with pytest.raises(WbcError, match="resnet50 only"):
        train_model(toy_split, tmp_path / "run", TrainConfig(model="cnn1", fine_tune_epochs=2))
    with pytest.raises(WbcError, match="lr must be"):
        train_model(toy_split, tmp_path / "run", TrainConfig(model="cnn1", lr=float("nan")))
    one_class = tmp_path / "one-class"
    one_class.mkdir()
    (one_class / "classes.txt").write_text("a\n")
    with pytest.raises(WbcError, match="classes.txt.*at least two"):
        train_model(one_class, tmp_path / "run", TrainConfig(model="cnn1"))
    assert not (tmp_path / "run").exists()  # nothing written for a refused run


@pytest.mark.slow
def test_diverging_run_is_refused_and_left_incomplete(toy_split, tmp_path):
    from wbc import runs
    from wbc.train import TrainConfig, train_model

    out = tmp_path / "diverged"
    with pytest.raises(WbcError, match="diverged.*lower --lr"):
        train_model(toy_split, out, TrainConfig(model="cnn1", image_size=32, epochs=2, batch_size=8, lr=1e6), verbose=0)
    assert not runs.is_complete(out) and not (out / "config.json").exists()
    with pytest.raises(WbcError, match="incomplete run"):
        runs.load_run(out)


@pytest.mark.slow
def test_min_epochs_holds_off_early_stopping(toy_split, tmp_path):
    """A learning rate so small that validation accuracy never changes: patience 1 stops after 2 epochs,
    unless min_epochs holds EarlyStopping off (it starts counting at epoch min_epochs + 1)."""
    from wbc import runs
    from wbc.train import TrainConfig, train_model

    frozen = dict(model="cnn1", image_size=32, epochs=6, batch_size=8, lr=1e-12, patience=1, augment=False)
    early = train_model(toy_split, tmp_path / "early", TrainConfig(**frozen), verbose=0)
    late = train_model(toy_split, tmp_path / "late", TrainConfig(**frozen, min_epochs=3), verbose=0)
    assert len(runs.read_history(early)) == 2
    assert len(runs.read_history(late)) == 5 and runs.read_config(late)["settings"]["min_epochs"] == 3


def test_balanced_class_weights():
    from wbc.train import _class_weights

    weights = _class_weights(np.array([0, 0, 0, 1]), 3)
    assert weights[1] == pytest.approx(3 * weights[0]) and weights[2] == 1.0  # class 2 absent


def _tiny_transfer_model(n_classes: int):
    """A stand-in for the ResNet50 transfer model: a frozen "backbone" convolution named like ResNet50's
    stage 5 (so unfreeze_top finds it), a frozen BatchNorm, and a trainable head."""
    import keras

    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Rescaling(1 / 255)(inputs)
    x = keras.layers.Conv2D(8, 3, name="conv5_block1_1_conv", trainable=False)(x)
    x = keras.layers.BatchNormalization(name="conv5_block1_1_bn", trainable=False)(x)
    x = keras.layers.Flatten(name="flatten")(x)
    outputs = keras.layers.Dense(n_classes, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)


@pytest.mark.slow
def test_fit_two_phase_keeps_phase_1_best_when_phase_2_is_worse(toy_split, tmp_path):
    from wbc import lessons, runs
    from wbc.pipeline import split_dataset
    from wbc.train import set_seeds

    set_seeds(0)
    args = dict(classes=CLASSES, image_size=16, batch_size=8)
    train_ds, val_ds = split_dataset(toy_split / "train.csv", **args), split_dataset(toy_split / "val.csv", **args)
    model = _tiny_transfer_model(len(CLASSES))
    run_dir = runs.start_run(tmp_path / "two-phase")
    with warnings.catch_warnings():  # reloading the best checkpoint into phase 2's model warns of nothing
        warnings.simplefilter("error", UserWarning)
        histories = lessons.fit_two_phase(
            model,
            train_ds,
            val_ds,
            run_dir,
            epochs=4,
            lr=0.01,
            fine_tune_epochs=2,
            fine_tune_lr=1e4,
            patience=10,
            verbose=0,
        )  # phase 2 at a ruinous rate
    assert model.get_layer("conv5_block1_1_conv").trainable and not model.get_layer("conv5_block1_1_bn").trainable
    history = runs.read_history(run_dir, phase1_epochs=len(histories[0].epoch))
    assert list(history["phase"]) == [1, 1, 1, 1, 2, 2]
    phase1_best = history.loc[history["phase"] == 1, "val_accuracy"].max()
    assert history.loc[history["phase"] == 2, "val_accuracy"].max() < phase1_best  # phase 2 is worse
    # the model holds phase 1's best weights, not the wrecked last ones
    assert model.evaluate(val_ds, verbose=0, return_dict=True)["accuracy"] == pytest.approx(phase1_best)
    config = runs.finish_run(run_dir, model, {"model": "tiny"}, phase1_epochs=len(histories[0].epoch))
    assert config["best_phase"] == 1 and config["best_epoch"] <= 4
    assert config["best_val_accuracy"] == pytest.approx(phase1_best)
    assert runs.read_config(run_dir)["best_phase"] == 1 and runs.is_complete(run_dir)


def test_configure_device_on_cpu_follows_the_cpu_and_explicit_choices_win(monkeypatch):
    import keras
    import tensorflow as tf

    from wbc import lessons

    if tf.config.list_physical_devices("GPU"):
        pytest.skip("CPU-only behaviour")
    try:
        for has_bf16, expected in ((True, "mixed_bfloat16"), (False, "float32")):
            monkeypatch.setattr(lessons, "cpu_has_bfloat16", lambda has=has_bf16: has)
            strategy = lessons.configure_device("auto")
            assert strategy.num_replicas_in_sync == 1
            assert keras.mixed_precision.global_policy().name == expected
        monkeypatch.setattr(lessons, "cpu_has_bfloat16", lambda: True)
        lessons.configure_device("float32")  # an explicit choice wins over the detection
        assert keras.mixed_precision.global_policy().name == "float32"
        lessons.configure_device(False)
        assert keras.mixed_precision.global_policy().name == "float32"
        monkeypatch.setattr(lessons, "cpu_has_bfloat16", lambda: False)
        lessons.configure_device(True)  # forced on a CPU without bf16 instructions: bfloat16 (emulated, slower)
        assert keras.mixed_precision.global_policy().name == "mixed_bfloat16"
        lessons.configure_device("mixed_float16")  # a policy name is taken as it is, even on a CPU
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        with pytest.raises(ValueError, match="use 'auto'"):
            lessons.configure_device("bf16")
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_cpu_has_bfloat16_reads_the_cpu_flags(tmp_path):
    from wbc.lessons import cpu_has_bfloat16

    line = "flags\t\t: fpu sse2 avx2 avx512f avx512bw {}\n"
    for extra, expected in (("avx512_bf16", True), ("amx_bf16 amx_tile", True), ("avx512_vnni", False), ("", False)):
        (tmp_path / "cpuinfo").write_text(line.format(extra) * 2)
        assert cpu_has_bfloat16(tmp_path / "cpuinfo") is expected, extra
    (tmp_path / "arm").write_text("Features\t: fp asimd sve bf16 i8mm\n")
    assert cpu_has_bfloat16(tmp_path / "arm") is True
    (tmp_path / "x86_bf16_lookalike").write_text("flags: avx512_bf16x\n")  # whole words only
    assert cpu_has_bfloat16(tmp_path / "x86_bf16_lookalike") is False
    assert cpu_has_bfloat16(tmp_path / "missing") is False  # no /proc/cpuinfo (macOS, Windows): float32


@pytest.mark.parametrize("model_name", ["cnn1", "small_resnet"])
def test_bfloat16_models_compute_in_bfloat16_and_output_float32(model_name):
    import keras

    from wbc.models import build_model

    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = build_model(model_name, 3, 32)
        probs = model(np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32"))
        conv = next(layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D))
        assert conv.compute_dtype == "bfloat16" and conv.kernel.dtype == "float32"  # maths bf16, weights float32
        assert probs.dtype == "float32"  # the softmax stays float32
        np.testing.assert_allclose(np.asarray(probs).sum(axis=1), 1.0, atol=1e-5)
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_configure_device_gpu_branch_with_faked_devices(monkeypatch):
    import keras
    import tensorflow as tf

    from wbc.lessons import configure_device

    fake_gpu = tf.config.PhysicalDevice(name="/physical_device:GPU:0", device_type="GPU")
    real_list = tf.config.list_physical_devices
    growth, capability = [], {"value": (8, 0)}
    monkeypatch.setattr(
        tf.config, "list_physical_devices", lambda kind=None: [fake_gpu] if kind == "GPU" else real_list(kind)
    )
    monkeypatch.setattr(tf.config.experimental, "set_memory_growth", lambda gpu, on: growth.append((gpu, on)))
    monkeypatch.setattr(
        tf.config.experimental, "get_device_details", lambda gpu: {"compute_capability": capability["value"]}
    )
    try:
        strategy = configure_device("auto")
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        assert strategy.num_replicas_in_sync == 1 and growth == [(fake_gpu, True)]
        assert keras.layers.Dense(2).dtype_policy.compute_dtype == "float16"  # layers built now compute in float16
        configure_device(mixed_precision=False)  # a GPU, but mixed precision switched off
        assert keras.mixed_precision.global_policy().name == "float32"
        configure_device(True)
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
        capability["value"] = (6, 1)  # a Pascal GPU: no tensor cores, float16 does not pay
        configure_device("auto")
        assert keras.mixed_precision.global_policy().name == "float32"
        configure_device("mixed_float16")  # ... unless asked for
        assert keras.mixed_precision.global_policy().name == "mixed_float16"
    finally:
        keras.mixed_precision.set_global_policy("float32")
    monkeypatch.undo()


def test_train_model_records_the_precision_asked_for_and_used(toy_split, tmp_path):
    from wbc.train import TrainConfig, train_model

    cfg = TrainConfig(model="cnn1", image_size=32, epochs=1, batch_size=8, precision="mixed_bfloat16")
    run = train_model(toy_split, tmp_path / "bf16", cfg, verbose=0)
    config = json.loads((run / "config.json").read_text())
    assert config["settings"]["precision"] == "mixed_bfloat16"
    assert config["precision_policy"] == "mixed_bfloat16"
    assert "dtype policy mixed_bfloat16 (precision=mixed_bfloat16)" in (run / "train.log").read_text()
    with pytest.raises(WbcError, match="unknown precision"):
        TrainConfig(precision="fp8").check()


def test_stain_augment_jitters_the_training_batches_and_is_recorded(toy_split, tmp_path, monkeypatch):
    from wbc import runtime
    from wbc.train import TrainConfig, train_model

    calls = []
    original = runtime.lessons().StainJitter.call

    def spy(self, images, training=False):
        calls.append(training)
        return original(self, images, training=training)

    monkeypatch.setattr(runtime.lessons().StainJitter, "call", spy)
    cfg = TrainConfig(model="cnn1", image_size=32, epochs=1, batch_size=8, stain_augment=True)
    run = train_model(toy_split, tmp_path / "stain", cfg, verbose=0)
    config = json.loads((run / "config.json").read_text())
    assert config["stain_augment"] is True and config["settings"]["stain_augment"] is True
    assert calls and all(calls)  # traced into the training pipeline, in training mode only
    plain = train_model(toy_split, tmp_path / "plain", TrainConfig(model="cnn1", image_size=32, epochs=1), verbose=0)
    assert json.loads((plain / "config.json").read_text())["stain_augment"] is False
    from wbc.cli import build_parser

    args = ["train", "--split-dir", "s", "--model", "cnn1", "--out", "o"]
    assert build_parser().parse_args([*args, "--stain-augment"]).stain_augment is True
    assert build_parser().parse_args(args).stain_augment is False


@pytest.mark.slow
def test_resnet50_two_phases(toy_split, tmp_path):
    from wbc import runs
    from wbc.train import TrainConfig, train_model

    cfg = TrainConfig(model="resnet50", weights="none", image_size=32, epochs=1, fine_tune_epochs=1, batch_size=16)
    run = train_model(toy_split, tmp_path / "resnet", cfg, verbose=0)
    history = runs.read_history(run)
    assert list(history["phase"]) == [1, 2] and list(history["epoch"]) == [1, 2]
    config = json.loads((run / "config.json").read_text())
    assert config["weights"] == "none" and config["phase1_epochs"] == 1 and config["best_phase"] in (1, 2)
    model, _ = runs.load_run(run)
    assert model.layers[1].name == "imagenet_preprocess"  # the saved model takes raw pixels
    assert model.get_layer("conv5_block1_1_conv").trainable and not model.get_layer("conv5_block1_1_bn").trainable


@pytest.mark.slow
def test_cli_trains_one_epoch(toy_split, tmp_path, capsys):
    from wbc.cli import main

    out = tmp_path / "cli-run"
    code = main(
        [
            "train",
            "--split-dir",
            str(toy_split),
            "--model",
            "cnn1",
            "--image-size",
            "32",
            "--epochs",
            "1",
            "--batch-size",
            "8",
            "--no-augment",
            "--quiet",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    config = json.loads((out / "config.json").read_text())
    assert config["settings"]["augment"] is False and config["epochs_run"] == 1
    assert (out / "model.keras").is_file()
    assert main(["train", "--split-dir", str(toy_split), "--model", "cnn1", "--out", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_cli_bad_arguments(tmp_path, capsys):
    from wbc.cli import main

    assert (
        main(["train", "--split-dir", str(tmp_path / "nowhere"), "--model", "cnn1", "--out", str(tmp_path / "run")])
        == 2
    )
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["train", "--split-dir", str(tmp_path), "--model", "lenet", "--out", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "invalid choice: 'lenet'" in capsys.readouterr().err


def test_the_shared_retracing_warning_is_dropped_during_training_only():
    """TensorFlow's retracing warning about Keras's shared train step is dropped inside train_model's
    fit; a user's own tf.function keeps it, and so does code outside the block."""
    import logging

    from wbc.train import _no_shared_retracing_warning

    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    tf_log, handler = logging.getLogger("tensorflow"), Keep()
    tf_log.addHandler(handler)
    shared = (
        "5 out of the last 15 calls to <function TensorFlowTrainer._make_function.<locals>.multi_step_on_iterator "
        "at 0x1> triggered tf.function retracing."
    )
    own = "5 out of the last 15 calls to <function my_step at 0x2> triggered tf.function retracing."
    try:
        with _no_shared_retracing_warning():
            tf_log.warning(shared)
            tf_log.warning(own)
        tf_log.warning(shared)
    finally:
        tf_log.removeHandler(handler)
    assert seen == [own, shared]
