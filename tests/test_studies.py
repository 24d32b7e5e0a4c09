"""wbc.studies: the two studies' recipes as published, and the fidelity tables the notebooks show."""

from __future__ import annotations

from dataclasses import fields
from types import SimpleNamespace

import pytest

from wbc import config, course, studies
from wbc.train import TrainConfig


def ctx(profile: str, seed: int = 42) -> SimpleNamespace:
    return SimpleNamespace(profile=config.get_profile(profile), seed=seed)


def test_study_a_in_the_full_profile_is_the_published_recipe():
    cfg = studies.study_a_config(ctx("full"), weights="none")
    assert (cfg.model, cfg.image_size, cfg.epochs, cfg.patience) == ("resnet50", 128, 10, 5)
    assert cfg.fine_tune_epochs == 0 and cfg.augment is False and cfg.min_epochs == 0  # one phase, no augmentation
    assert cfg.batch_size == 32 and not cfg.class_weights  # inferred from 312 steps per epoch; no class weights


@pytest.mark.parametrize("profile", ["ci", "demo"])
def test_study_a_in_small_profiles_keeps_the_recipe_and_shortens_the_budget(profile):
    p = config.get_profile(profile)
    cfg = studies.study_a_config(ctx(profile), weights="none")
    assert cfg.epochs == min(10, p.epochs) and cfg.image_size == min(128, p.image_size)
    assert (cfg.fine_tune_epochs, cfg.augment, cfg.patience) == (0, False, 5)


def test_the_main_run_adds_a_phase_and_augmentation_to_study_a():
    a, main = studies.study_a_config(ctx("full"), weights="none"), course.main_run_config(ctx("full"), weights="none")
    assert main.fine_tune_epochs > 0 and main.augment and not a.augment and a.fine_tune_epochs == 0
    assert (a.lr, a.image_size, a.batch_size, a.seed) == (main.lr, main.image_size, main.batch_size, main.seed)


def test_study_a_overrides_and_none():
    cfg = studies.study_a_config(ctx("demo"), weights="none", epochs=3, image_size=None)
    assert cfg.epochs == 3 and cfg.image_size == config.get_profile("demo").image_size


@pytest.mark.parametrize("model", ["cnn1", "cnn2", "resnet18"])
def test_study_b_in_the_full_profile_is_the_published_recipe(model):
    cfg = studies.study_b_config(ctx("full"), model)
    assert (cfg.model, cfg.image_size, cfg.epochs, cfg.weights) == (model, 224, 100, "none")
    assert cfg.augment and cfg.patience >= cfg.epochs and cfg.min_epochs == 0  # no early stopping


@pytest.mark.parametrize("profile", ["ci", "demo"])
def test_study_b_in_small_profiles_trains_the_profile_budget_without_early_stopping(profile):
    p = config.get_profile(profile)
    cfg = studies.study_b_config(ctx(profile), "cnn2")
    assert cfg.epochs == min(100, p.cnn_epochs) and cfg.image_size == min(224, p.image_size)
    assert cfg.patience == cfg.epochs


def test_study_b_overrides():
    assert studies.study_b_config(ctx("demo"), "cnn1", epochs=7).patience == 7  # still no early stopping
    cfg = studies.study_b_config(ctx("demo"), "cnn1", epochs=7, patience=3, augment=False)
    assert (cfg.epochs, cfg.patience, cfg.augment) == (7, 3, False)


def test_no_early_stopping_means_early_stopping_cannot_fire():
    import numpy as np

    cfg = studies.study_b_config(ctx("demo"), "cnn2")
    curve = np.linspace(1, 0, cfg.epochs)  # validation accuracy that only gets worse
    wait, stopped = 0, False
    for value in curve[1:]:  # Keras' rule: stop once `patience` epochs in a row bring no improvement
        wait = wait + 1 if value <= curve[0] else 0
        stopped = stopped or wait >= cfg.patience
    assert not stopped


@pytest.mark.parametrize("study", ["A", "B"])
def test_fidelity_rows_are_well_formed(study):
    names = {f.name for f in fields(TrainConfig)}
    rows = studies.FIDELITY[study]
    settings = [row[1] for row in rows]
    assert len(settings) == len(set(settings)), "one row per setting"
    for stage, setting, paper, status, course_text, field, reason in rows:
        assert stage in ("data", "model", "training") and status in studies.STATUSES
        assert paper and (course_text or field), setting
        assert field is None or field in names, f"{setting}: {field} is not a TrainConfig field"
        if status != "stated":
            assert reason or course_text, f"{setting}: an inferred or chosen setting says why or what"
    assert {row[0] for row in rows} == {"data", "model", "training"}


def test_study_a_head_settings_are_course_choices_not_the_study():
    table = studies.fidelity_table("A", stages=["model"])
    for setting in ("pooling", "dropout rate", "regulariser type, strength", "input preprocessing"):
        assert table.loc[setting, "status"] == "course choice"
    for setting in ("dense layer", "dropout layer", "regulariser", "normalisation layer"):
        assert table.loc[setting, "status"] == "stated"
    training = studies.fidelity_table("A", stages=["training"])
    assert training.loc["optimiser", "status"] == training.loc["learning rate", "status"] == "course choice"
    assert training.loc["epochs", "status"] == training.loc["early stopping", "status"] == "stated"


def test_fidelity_table_shows_each_configs_values():
    a, main = studies.study_a_config(ctx("full"), weights="none"), course.main_run_config(ctx("full"), weights="none")
    table = studies.fidelity_table("A", stages=["training"], configs={"A": a, "main": main})
    assert table.loc["epochs", "A"] == "10" and table.loc["early stopping", "A"] == "5"
    assert table.loc["augmentation", "A"] == "False" and table.loc["augmentation", "main"] == "True"
    assert table.loc["optimiser", "A"] == table.loc["optimiser", "main"] == "Adam"  # no field: the course's text
    assert "course" not in table.columns and "field" not in table.columns
    b = studies.fidelity_table("B", configs={"B": studies.study_b_config(ctx("full"), "cnn2")})
    assert b.loc["epochs", "B"] == "100" and b.loc["image size", "B"] == "224"


def test_describe_names_model_and_recipe():
    a = {"model": "resnet50", "weights": "none", "settings": {"fine_tune_epochs": 0, "augment": False}}
    main = {"model": "resnet50", "weights": "imagenet", "settings": {"fine_tune_epochs": 2, "augment": True}}
    r18 = {"model": "resnet18", "weights": "none", "settings": {"epochs": 20, "patience": 20}}
    cnn = {"model": "cnn2", "settings": {"epochs": 20, "patience": 5, "class_weights": True}}
    assert studies.describe(a) == "ResNet50, random init; Study A's recipe (1 phase, no augmentation)"
    assert studies.describe(main) == "ResNet50, ImageNet; course recipe (2 phase(s), with augmentation)"
    assert studies.describe(r18) == "ResNet18, random init; Study B's recipe (no early stopping)"
    assert studies.describe(cnn) == "CNN2; course recipe (early stopping); class weights"


def test_training_code_covers_resnet18_and_matches_the_course_for_the_others():
    assert studies.training_code("cnn1") == course.training_code("cnn1")
    code = studies.training_code("resnet18")
    assert len(code) == 12 and code != studies.training_code("cnn1")
