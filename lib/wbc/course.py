"""Notebook plumbing: one setup call, and ``ensure_*`` functions so every notebook can run alone.

Each notebook starts with ``ctx = course.setup_notebook(...)``: it shows library versions, the
GPU check, the profile and the data folder (with a DEMO DATA banner on generated data), sets the
seeds once and routes the library's log messages to the notebook. The ``ensure_*`` helpers
rebuild an earlier stage's output when it is missing or stale, or reuse it, and say which:

    ensure_manifest(ctx, "wbc10")     -> <work_dir>/manifests/wbc10.csv
    ensure_preprocessed(ctx, "wbc10") -> <work_dir>/processed/wbc10/manifest.csv
    ensure_splits(ctx, "wbc10")       -> <work_dir>/splits/wbc10/ (train/val/test.csv, audit.csv, classes.txt)
    ensure_run(ctx, name, cfg, split) -> <work_dir>/runs/<name>-<key>

``"bloodmnist"`` (a ``bloodmnist[_SIZE].npz`` in the data folder) goes through the same stages:
its arrays unpacked once into PNGs under ``<work_dir>/bloodmnist/``, MedMNIST's split kept.

A stage output is reused while its recipe (``fileio.recipe_matches``: the settings and the
digests of its inputs) is unchanged; a run while its key (settings, split files, training code)
is. TensorFlow is imported inside functions only.
"""

from __future__ import annotations

import json
import logging
import platform
import re
import shutil
from dataclasses import dataclass, fields, replace
from pathlib import Path

import pandas as pd

from wbc import config
from wbc.config import (  # noqa: F401 (notebook 06 reads DEFAULT_FRACTIONS)
    BLOODMNIST_GLOB,
    DEFAULT_FRACTIONS,
    NOTEBOOK_DATASETS,
    SOURCE_DIRS,
    SPLITS,
)
from wbc.download import REGISTRY
from wbc.errors import WbcError
from wbc.fileio import file_digest, read_json, recipe_matches, write_csv_atomic, write_recipe, write_text_atomic

log = logging.getLogger(__name__)
DEFAULT_SEED = 42
DEMO_MARKER = ".wbc-demo-complete"  # written last by the demo generation: its absence means "redo"
STAMP_NAME = "data-stamp.json"  # in work_dir: which demo data the stage outputs were built from
NEEDS = {
    "pbc": ("PBC",),
    "lmu": ("LMU",),
    "all": ("ALL",),
    "wbc10": ("PBC", "LMU"),
    "all4": ("ALL",),
    "bloodmnist": ("BloodMNIST",),
}
WHERE_TO_GET = {
    src: f"{REGISTRY[src.lower()].target}/ (doi {REGISTRY[src.lower()].doi}): `python -m wbc download {src.lower()}`"
    for src in SOURCE_DIRS
} | {
    "BloodMNIST": f"bloodmnist_<size>.npz (doi {REGISTRY['bloodmnist'].doi}): "
    "`python -m wbc download bloodmnist --size 128 --data-dir DIR` (64, 128 or 224 px)"
}
_CURRENT: Context | None = None


@dataclass
class Context:
    """What a notebook runs on: profile, data folder, where stage outputs and figures go."""

    profile: config.Profile
    data_dir: Path
    is_demo: bool
    work_dir: Path
    figures_dir: Path
    seed: int
    datasets: tuple[str, ...]  # sources present in data_dir, e.g. ("PBC", "LMU", "ALL", "BloodMNIST")
    dataset: str = "wbc10"
    notebook: str = "notebook"  # folder name of this notebook's figures

    def has(self, name: str) -> bool:
        """True when every source that dataset ``name`` needs is in the data folder."""
        return all(src in self.datasets for src in NEEDS[_check_name(name)])

    def save_figure(self, fig, name: str) -> Path:
        """Save ``fig`` as ``<figures_dir>/<notebook>/<name>.png`` (atomic) and return the path."""
        from wbc.plots import save_figure

        return save_figure(fig, self.figures_dir / self.notebook / f"{name}.png")


# ----------------------------------------------------------------------------- setup


def setup_notebook(
    title: str | None = None,
    *,
    profile: str | None = None,
    data_dir=None,
    seed: int | None = None,
    dataset: str | None = None,
    about: str | None = None,
    verbose: bool = True,
    **overrides,
) -> Context:
    """Show versions, GPU check, profile and data source; set seeds; return the Context.

    ``overrides`` change profile fields (``image_size=64``, ``epochs=2``); ``None`` values keep
    the profile default, so a notebook can pass its parameters cell through unchanged. The
    library's messages (``logging``, logger ``wbc``) are shown in the notebook from here on;
    ``verbose=False`` leaves out this function's own description of the run. ``about`` names the
    dataset a notebook's lesson is built on (03, 04 and 13: wbc10, whose two sources they compare):
    asked for bloodmnist, such a notebook says so and teaches on ``about``, from the data folder when
    it holds those sources, else from the generated demo data.
    """
    global _CURRENT
    config.show_logs()
    pd.set_option("display.max_colwidth", None)  # whole sentences in tables (notes, reasons, file names)
    overrides = {k: v for k, v in overrides.items() if v is not None}
    valid = {f.name for f in fields(config.Profile)} - {"name"}
    unknown = sorted(set(overrides) - valid)
    if unknown:
        raise WbcError(f"unknown setting(s) {unknown}: the profile has {sorted(valid)}")
    prof = config.get_profile(profile, **overrides)
    seed = DEFAULT_SEED if seed is None else int(seed)
    say = log.info if verbose else log.debug
    if title:
        say(f"== {title} ==")
    _describe_libraries(say)
    from wbc.train import set_seeds

    set_seeds(seed)
    say(f"Seed: {seed} (Python, NumPy and TensorFlow seeded once, here)")
    data = config.resolve_data_dir(data_dir)
    if about and (dataset or "").lower() == "bloodmnist" and about != "bloodmnist":
        data, dataset = _teach_on(about, data, say), about
    is_demo = data is None or data == config.demo_data_dir(prof.demo_per_class).resolve()
    if is_demo:
        data = ensure_demo_data(prof.demo_per_class, say=say)
    assert data is not None  # None only when no folder is given, and then is_demo
    present = available_datasets(data)
    ctx = Context(
        profile=prof,
        data_dir=data,
        is_demo=is_demo,
        work_dir=config.work_dir(data, prof),
        figures_dir=config.output_dir() / "figures",
        seed=seed,
        datasets=present,
        dataset=(dataset or "wbc10").lower(),
        notebook=_slug(title),
    )
    _check_name(ctx.dataset)
    if ctx.dataset == "bloodmnist" and "BloodMNIST" in present:
        _fit_profile_to_bloodmnist(ctx, say)
    if is_demo:
        _check_stamp(ctx)
    _configure_matplotlib()
    say(f"Profile: {prof.name}  " + ", ".join(f"{k}={v}" for k, v in prof.as_dict().items() if k != "name"))
    say(f"Data folder: {data}  (sources found: {', '.join(present) or 'none'})")
    say(f"Stage outputs: {ctx.work_dir}")
    missing = [src for src in NEEDS[ctx.dataset] if src not in present]
    if missing:
        say(
            f"NOTE: dataset {ctx.dataset!r} needs {', '.join(missing)}, which is not in the data folder. "
            "Get it with: " + "; ".join(WHERE_TO_GET[m] for m in missing)
        )
    if is_demo:
        say(demo_banner())
    _CURRENT = ctx
    return ctx


def _teach_on(about: str, data: Path | None, say) -> Path | None:
    """The data folder for a notebook whose lesson needs dataset ``about`` when bloodmnist was asked for."""
    held = data is not None and any(src in available_datasets(data) for src in NEEDS[_check_name(about)])
    say(
        f"NOTE: DATASET='bloodmnist', but this notebook's lesson is built on {about!r} "
        f"({' + '.join(NEEDS[about])}: it compares their sources), which BloodMNIST's one source cannot show. "
        f"It runs on {about!r} from "
        + (f"{data}." if held else "the generated demo data (see the banner below).")
        + " Notebooks 05-12 work on BloodMNIST itself."
    )
    return data if held else None


def _fit_profile_to_bloodmnist(ctx: Context, say) -> None:
    """BloodMNIST's images are small (28 to 224 px): the OpenCV stage keeps them at their own size
    rather than blowing them up to ``preprocess_size``; training still resizes to ``image_size``."""
    from wbc.readers import bloodmnist_size, locate_bloodmnist

    npz = locate_bloodmnist(ctx.data_dir, ctx.profile.image_size)
    size = bloodmnist_size(npz)
    if size < ctx.profile.preprocess_size:
        ctx.profile = replace(ctx.profile, preprocess_size=size)
    say(
        f"BloodMNIST: {npz.name} ({size} px, MedMNIST's official train/val/test split); preprocess_size "
        f"{ctx.profile.preprocess_size}, training at image_size {ctx.profile.image_size}"
        + (" (upscaled: a larger .npz gives the model more detail)" if size < ctx.profile.image_size else "")
    )


def demo_banner() -> str:
    """The banner shown when the notebook runs on generated demo data."""
    line = "#" * 78
    return (
        f"{line}\n#  DEMO DATA: synthetic images in the real folder layouts, NOT real blood cells.\n"
        "#  Every number below describes the demo data only. For the real study, download the\n"
        "#  datasets (notebook 02) and set WBC_DATA_DIR to their folder.\n" + line
    )


def available_datasets(data_dir: Path) -> tuple[str, ...]:
    """Which of PBC / LMU / ALL have their folder in ``data_dir``, and BloodMNIST when a
    ``bloodmnist[_SIZE].npz`` is there."""
    found = tuple(src for src, dirname in SOURCE_DIRS.items() if (Path(data_dir) / dirname).is_dir())
    return found + (("BloodMNIST",) if any(Path(data_dir).glob(BLOODMNIST_GLOB)) else ())


def folder_summary(data_dir: Path) -> pd.DataFrame:
    """Files per folder of each source present in ``data_dir``: columns ``dataset, folder, files``."""
    rows = []
    for src, dirname in SOURCE_DIRS.items():
        root = Path(data_dir) / dirname
        for folder in sorted(p for p in [root, *root.rglob("*")] if p.is_dir()):
            files = sum(1 for f in folder.iterdir() if f.is_file())
            if files or folder != root and not any(c.is_dir() for c in folder.iterdir()):
                rows.append({"dataset": src, "folder": str(folder.relative_to(data_dir)), "files": files})
    return pd.DataFrame(rows, columns=["dataset", "folder", "files"])


def save_figure(fig, name: str, ctx: Context | None = None) -> Path:
    """Save ``fig`` into the figures folder of ``ctx`` (default: the last ``setup_notebook``'s)."""
    ctx = ctx or _CURRENT
    if ctx is None:
        raise WbcError("call course.setup_notebook(...) first")
    return ctx.save_figure(fig, name)


def _describe_libraries(say) -> None:
    """Library versions, and the GPU check: warn (never fail) when there is none."""
    import cv2
    import numpy as np

    from wbc.runtime import import_tensorflow

    tf = import_tensorflow()  # first import: without TensorFlow's start-up log lines
    import keras

    say(
        f"Python {platform.python_version()} | TensorFlow {tf.__version__} | Keras {keras.__version__} | "
        f"NumPy {np.__version__} | pandas {pd.__version__} | OpenCV {cv2.__version__}"
    )
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        say(f"GPU: {len(gpus)} found: " + ", ".join(g.name for g in gpus))
        say(
            "Mixed precision (float16 maths, float32 weights) speeds up training on GPUs with tensor "
            "cores; notebook 10 switches it on with configure_device (keras.mixed_precision)."
        )
    else:
        say(
            "WARNING: no GPU found. Everything runs, but training on the CPU is slow: keep the 'ci' or "
            "'demo' profile here. For a GPU: Colab: Runtime > Change runtime type > GPU; Kaggle: "
            "Settings > Accelerator > GPU."
        )
        say("Mixed precision: off (on a CPU float16 maths is slower, not faster).")


def _configure_matplotlib() -> None:
    """Inline figures in Jupyter (so Figure objects returned by wbc.plots display) + defaults."""
    import matplotlib.pyplot as plt

    try:
        shell = get_ipython()  # type: ignore[name-defined]  # noqa: F821  (defined inside IPython)
    except NameError:
        shell = None
    if shell is not None:
        shell.run_line_magic("matplotlib", "inline")
    plt.rcParams.update(
        {
            "figure.dpi": 100,
            "savefig.dpi": 120,
            "figure.figsize": (8, 4.5),
            "axes.grid": False,
            "axes.titlesize": 11,
            "image.cmap": "viridis",
        }
    )


def _slug(title: str | None) -> str:
    return re.sub(r"[^a-z0-9]+", "_", (title or "notebook").lower()).strip("_")[:60] or "notebook"


# ----------------------------------------------------------------------------- data folder


def ensure_demo_data(per_class: int, seed: int = 0, say=log.info) -> Path:
    """Generate the demo data into ``config.demo_data_dir(per_class)`` unless a complete copy is there.

    A marker written last records ``per_class`` and ``seed``; a missing or different marker (an
    interrupted or other-sized generation) means the folder is generated again.
    """
    from wbc.demo import generate_demo

    root = config.demo_data_dir(per_class)
    wanted = {"per_class": int(per_class), "seed": int(seed)}
    marker = read_json(root / DEMO_MARKER)
    if marker == wanted:
        say(f"Demo data: reusing {root} ({per_class} images per class and source)")
        return root
    if marker is not None:  # another size: generate_demo refuses foreign files, so start afresh
        shutil.rmtree(root)
    say(f"Demo data: generating {per_class} images per class and source into {root} ...")
    try:
        generate_demo(root, per_class=int(per_class), seed=int(seed), progress=True)
    except WbcError:  # an interrupted generation of another size: start afresh
        shutil.rmtree(root, ignore_errors=True)
        generate_demo(root, per_class=int(per_class), seed=int(seed), progress=True)
    write_text_atomic(root / DEMO_MARKER, json.dumps(wanted))
    return root


def _check_stamp(ctx: Context) -> None:
    """Clear stage outputs built from a different generation of the demo data (they would be stale)."""
    marker = (ctx.data_dir / DEMO_MARKER).read_text() if (ctx.data_dir / DEMO_MARKER).exists() else ""
    stamp = ctx.work_dir / STAMP_NAME
    if ctx.work_dir.exists() and stamp.exists() and stamp.read_text() != marker:
        log.info(f"Demo data was regenerated since {ctx.work_dir} was built: clearing those stale outputs.")
        shutil.rmtree(ctx.work_dir)
    if not stamp.exists():
        write_text_atomic(stamp, marker)


# ----------------------------------------------------------------------------- ensure_* helpers


def _check_name(name: str) -> str:
    if name not in NOTEBOOK_DATASETS:
        raise WbcError(f"unknown dataset {name!r}: choose one of {', '.join(NOTEBOOK_DATASETS)}")
    return name


def _require_sources(ctx: Context, name: str) -> None:
    """Raise a WbcError naming what to download when dataset ``name`` cannot be built here."""
    missing = [src for src in NEEDS[name] if src not in ctx.datasets]
    if name == "wbc10" and len(missing) < 2:
        return  # wbc10 can be built from one of its two sources (ensure_manifest says what is missing)
    if missing:
        raise WbcError(
            f"dataset {name!r} needs {', '.join(missing)}, but {ctx.data_dir} has no "
            + " or ".join(f"{SOURCE_DIRS[m]}/" if m in SOURCE_DIRS else "bloodmnist[_SIZE].npz" for m in missing)
            + " folder. Get it with: "
            + "; ".join(WHERE_TO_GET[m] for m in missing)
            + ", then set WBC_DATA_DIR to the folder holding it."
        )


def _reuse(out: Path, recipe: dict, what: str, rebuild: bool, shown: Path | None = None) -> bool:
    """True (and say so) when ``out`` exists and was built from the same ``recipe``."""
    if rebuild or not out.exists():
        return False
    if not recipe_matches(out, recipe):
        log.info(f"{what}: settings or inputs changed since {shown or out} was built: rebuilding")
        return False
    log.info(f"{what}: reusing {shown or out}  (to rebuild: pass rebuild=True or delete it)")
    return True


def _digest(path: Path) -> str:
    return file_digest(path)[:16]


def _read(path: Path) -> pd.DataFrame:
    from wbc.preprocess import read_manifest_csv

    return read_manifest_csv(path)


def ensure_manifest(ctx: Context, name: str, rebuild: bool = False) -> Path:
    """``work_dir/manifests/<name>.csv`` for pbc, lmu, all, wbc10 or all4; built when missing.

    Beside it: ``<name>-skipped.csv`` (raw files the reader could not use, with the reason) and,
    for wbc10, ``wbc10-excluded.csv`` (images left out by the class map or the cap).
    """
    _check_name(name)
    _require_sources(ctx, name)
    out = ctx.work_dir / "manifests" / f"{name}.csv"
    if name in ("pbc", "lmu", "all"):
        recipe: dict[str, object] = {"data_dir": str(ctx.data_dir)}
        if _reuse(out, recipe, f"manifest {name}", rebuild):
            return out
        from wbc.readers import read_dataset

        extra = {"version": "both"} if name == "all" else {}  # ALL: Original and Segmented, kept apart by `version`
        manifest, skipped = read_dataset(name, ctx.data_dir, **extra)
        write_csv_atomic(skipped, out.with_name(f"{name}-skipped.csv"))
        if len(skipped):
            log.info(
                f"{name}: {len(skipped)} file(s) reported (see {name}-skipped.csv):\n"
                + "\n".join(f"  {row.path}: {row.reason}" for row in skipped.head(5).itertuples())
            )
    elif name == "bloodmnist":
        manifest, recipe = _bloodmnist_manifest(ctx, out, rebuild)
        if manifest is None:
            return out
    elif name == "wbc10":
        inputs = {src: ensure_manifest(ctx, src.lower(), rebuild) for src in ("PBC", "LMU") if src in ctx.datasets}
        recipe = {"cap": ctx.profile.cap, "seed": ctx.seed, **{k: _digest(p) for k, p in inputs.items()}}
        if _reuse(out, recipe, "manifest wbc10", rebuild):
            return out
        from wbc.merge import build_wbc10

        for src in ("PBC", "LMU"):
            if src not in inputs:
                log.info(
                    f"NOTE: {SOURCE_DIRS[src]}/ is not in {ctx.data_dir}: wbc10 is built without it, so "
                    f"classes only {src} provides are missing. Get it with: {WHERE_TO_GET[src]}"
                )
        frames = {k: _read(p) for k, p in inputs.items()}
        manifest, excluded = build_wbc10(frames.get("PBC"), frames.get("LMU"), cap=ctx.profile.cap, seed=ctx.seed)
        write_csv_atomic(excluded, out.with_name("wbc10-excluded.csv"))
        log.info(f"wbc10: {len(manifest)} images kept, {len(excluded)} excluded (listed in wbc10-excluded.csv)")
    else:
        source = ensure_manifest(ctx, "all", rebuild)
        recipe = {"all": _digest(source)}
        if _reuse(out, recipe, "manifest all4", rebuild):
            return out
        from wbc.merge import build_all4

        manifest, _ = build_all4(_read(source))
        log.info(
            "all4: the Original version of the ALL images (their Segmented copies show the same "
            "cells, so they are left out: one cell never appears twice)"
        )
    write_csv_atomic(manifest, out)
    write_recipe(out, recipe)
    log.info(f"manifest {name}: built {out} ({len(manifest)} images)")
    return out


def _bloodmnist_manifest(ctx: Context, out: Path, rebuild: bool) -> tuple[pd.DataFrame | None, dict]:
    """The BloodMNIST manifest: the .npz's arrays written as PNGs under ``work_dir/bloodmnist/<file>/``
    (the raw .npz is only read), with MedMNIST's official ``split`` column. ``None`` when reused."""
    from wbc.readers import locate_bloodmnist, read_bloodmnist, write_bloodmnist_folders

    npz = locate_bloodmnist(ctx.data_dir, ctx.profile.image_size)
    stat = npz.stat()
    recipe: dict[str, object] = {"npz": str(npz), "bytes": stat.st_size, "mtime": int(stat.st_mtime)}
    if _reuse(out, recipe, "manifest bloodmnist", rebuild):
        return None, recipe
    log.info(f"bloodmnist: reading {npz} ({stat.st_size / 1e6:.0f} MB) with numpy ...")
    data = read_bloodmnist(npz)
    png_dir = ctx.work_dir / "bloodmnist" / npz.stem
    shutil.rmtree(png_dir, ignore_errors=True)  # the file changed, or a rebuild: no PNG of an older one stays
    manifest = write_bloodmnist_folders(data, png_dir, progress=True)
    size = data.images["train"].shape[1]
    counts = ", ".join(f"{split} {len(data.labels[split])}" for split in SPLITS)
    log.info(
        f"bloodmnist: {len(manifest)} images of {size}x{size} px ({counts}: MedMNIST's official split, kept), "
        f"8 classes (PBC's own folders; ig and neutrophil are not divided into sub-types)"
    )
    return manifest, recipe


def ensure_preprocessed(ctx: Context, name: str, rebuild: bool = False) -> Path:
    """``work_dir/processed/<name>/manifest.csv``: the images normalised by OpenCV, built when missing.

    Images resized to ``profile.preprocess_size`` (stretch, as Study A), black-band images
    quarantined; ``quarantine.csv`` beside it lists every image left out, with the reason.
    """
    source = ensure_manifest(ctx, name, rebuild)
    out_dir = ctx.work_dir / "processed" / name
    out = out_dir / "manifest.csv"
    size = ctx.profile.preprocess_size
    black_band = name != "bloodmnist"  # BloodMNIST: no black-band removal, every image of the official split kept
    recipe = {"manifest": _digest(source), "size": size, **({} if black_band else {"remove_black_band": False})}
    if _reuse(out, recipe, f"processed {name}", rebuild):
        return out
    from wbc.preprocess import preprocess_manifest

    manifest = _read(source)
    log.info(f"processed {name}: normalising {len(manifest)} images to {size}x{size} into {out_dir} ...")
    processed, quarantine = preprocess_manifest(manifest, out_dir, size=size, remove_black_band=black_band)
    write_recipe(out, recipe)
    log.info(f"processed {name}: {len(processed)} images ready, {len(quarantine)} quarantined (quarantine.csv)")
    return out


def ensure_splits(ctx: Context, name: str, fractions=None, rebuild: bool = False) -> Path:
    """``work_dir/splits/<name>/`` with train/val/test.csv, audit.csv and classes.txt.

    Default fractions follow the studies (``config.DEFAULT_FRACTIONS``): 80/12/8 for wbc10
    (Study A), 70/15/15 otherwise (Study B). Duplicate groups stay in one split (``wbc.split``).
    BloodMNIST keeps MedMNIST's official split when ``fractions`` is None, so its results compare
    with MedMNIST's table (the audit still reports any duplicate that crosses it); with fractions
    it is split again, group-aware, into ``splits/bloodmnist_<train>_<val>_<test>/`` beside it.
    """
    if name == "bloodmnist" and fractions is None:
        return _official_splits(ctx, rebuild)
    fractions = [float(f) for f in (fractions or DEFAULT_FRACTIONS.get(name, DEFAULT_FRACTIONS["all4"]))]
    source = ensure_preprocessed(ctx, name, rebuild)
    out_dir = ctx.work_dir / "splits" / name
    if name == "bloodmnist":
        out_dir = out_dir.with_name("bloodmnist_" + "_".join(f"{round(f * 100)}" for f in fractions))
        log.info(
            f"bloodmnist: fractions given, so the images are split again into {out_dir.name}/; MedMNIST's "
            "official split (what ensure_splits(ctx, 'bloodmnist') gives, and notebooks 07-13 train on) is kept "
            f"apart in {out_dir.with_name('bloodmnist')}/"
        )
    classes_file = out_dir / "classes.txt"  # written last: its presence means "complete"
    recipe = {"manifest": _digest(source), "fractions": fractions, "seed": ctx.seed}
    if _reuse(classes_file, recipe, f"splits {name}", rebuild, shown=out_dir):
        return out_dir
    from wbc.split import split_manifest, write_split_folder

    splits = split_manifest(_read(source), fractions, seed=ctx.seed)
    write_split_folder(splits, out_dir)  # the same files as `python -m wbc split`
    write_recipe(classes_file, recipe)
    sizes = ", ".join(f"{part} {len(splits[part])}" for part in SPLITS)
    log.info(f"splits {name}: built {out_dir} ({sizes}; fractions {fractions}, seed {ctx.seed})")
    return out_dir


def _official_splits(ctx: Context, rebuild: bool) -> Path:
    """BloodMNIST's split folder from the manifest's ``split`` column (MedMNIST's own split)."""
    source = ensure_preprocessed(ctx, "bloodmnist", rebuild)
    out_dir = ctx.work_dir / "splits" / "bloodmnist"
    classes_file = out_dir / "classes.txt"
    recipe = {"manifest": _digest(source), "split": "official"}
    if _reuse(classes_file, recipe, "splits bloodmnist", rebuild, shown=out_dir):
        return out_dir
    from wbc.split import content_hashes, duplicate_groups, write_split_folder

    df = content_hashes(_read(source).reset_index(drop=True))
    df["group"] = duplicate_groups(df)
    splits = {
        part: df[df["split"] == part].sort_values(["label", "path"], kind="stable").reset_index(drop=True)
        for part in SPLITS
    }
    audit = write_split_folder(splits, out_dir)
    write_recipe(classes_file, recipe)
    leaks = int((audit["kind"] == "across_splits").sum()) if "kind" in audit else 0
    sizes = ", ".join(f"{part} {len(splits[part])}" for part in SPLITS)
    log.info(
        f"splits bloodmnist: built {out_dir} ({sizes}: MedMNIST's official split; "
        f"{leaks} duplicate group(s) across splits reported in audit.csv, kept as published)"
    )
    return out_dir


# ----------------------------------------------------------------------------- training runs
#
# A notebook that needs a trained model (11 needs 10's, 12 and 11 need 08's baselines) finds it
# in <work_dir>/runs/<name>-<key>, where the key hashes the settings, the split files and the
# code that trains (the notebooks' #@save functions). Edit a layer, a callback or a setting and
# the key changes: the run is trained again, never reused stale.

TRAINING_CODE = ("configure_device", "augmentation_layers", "make_dataset", "fit_two_phase")
BUILDERS = {
    "resnet50": "build_resnet50_transfer",
    "cnn1": "build_cnn1",
    "cnn2": "build_cnn2",
    "small_resnet": "build_small_resnet",
}


def main_run_config(ctx: Context, **overrides):
    """Study A's ResNet50 as the course trains it, for ``ctx``'s profile; ``None`` values ignored.

    ``weights="auto"`` is resolved here (ImageNet when it can be had, else random weights with a
    loud warning), so a run on random weights is never mistaken for one on ImageNet weights.
    """
    from wbc.models import resolve_weights
    from wbc.train import TrainConfig

    p = ctx.profile
    settings = {
        "model": "resnet50",
        "weights": "auto",
        "image_size": p.image_size,
        "epochs": p.epochs,
        "fine_tune_epochs": p.fine_tune_epochs,
        "batch_size": p.batch_size,
        "lr": p.learning_rate,
        "fine_tune_lr": 1e-5,
        "patience": 5,
        "seed": ctx.seed,
        **{k: v for k, v in overrides.items() if v is not None},
    }
    settings["weights"] = str(resolve_weights(settings["weights"]))
    return TrainConfig(**settings)


def baseline_config(ctx: Context, model: str, **overrides):
    """A small from-scratch model (cnn1, cnn2, small_resnet) with the profile's epoch budget:
    ``cnn_epochs``, early stopping not before ``cnn_min_epochs``. ``None`` values are ignored."""
    from wbc.train import TrainConfig

    p = ctx.profile
    settings = {
        "model": model,
        "weights": "none",
        "image_size": p.image_size,
        "epochs": p.cnn_epochs,
        "min_epochs": min(p.cnn_min_epochs, p.cnn_epochs),
        "batch_size": p.batch_size,
        "lr": p.learning_rate,
        "seed": ctx.seed,
        **{k: v for k, v in overrides.items() if v is not None},
    }
    return TrainConfig(**settings)


def training_code(model: str, namespace: dict | None = None) -> str:
    """Fingerprint of the code that trains ``model``: the notebook's own definitions (pass
    ``globals()``) where it has them, ``wbc.lessons``' otherwise."""
    from wbc import runs
    from wbc.runtime import lessons

    names = (*TRAINING_CODE, BUILDERS[model])
    return runs.code_fingerprint(*[(namespace or {}).get(n) or getattr(lessons(), n) for n in names])


def run_folder(ctx: Context, name: str, cfg, split_dir: Path, code: str) -> Path:
    """``<work_dir>/runs/<name>-<key>``: the key changes with the settings, the split and the code."""
    from wbc import runs

    if getattr(cfg, "stain_augment", False):  # the layer train_model adds: its code counts too
        from wbc.runtime import lessons

        code += runs.code_fingerprint(lessons().StainJitter)
    key = runs.run_key({"config": cfg.as_dict(), "split": runs.split_digests(split_dir)}, code)
    return ctx.work_dir / "runs" / f"{name}-{key}"


def ensure_run(ctx: Context, name: str, cfg, split_dir: Path, namespace: dict | None = None) -> Path:
    """The run folder of ``cfg`` on ``split_dir``: reused when complete, else trained now (by the
    command line's ``train_model``, which runs the same notebook code) and said so."""
    from wbc import runs
    from wbc.train import train_model

    run_dir = run_folder(ctx, name, cfg, split_dir, training_code(cfg.model, namespace))
    if runs.is_complete(run_dir):
        log.info(f"{name}: reusing {run_dir} (same settings, split and code)")
        return run_dir
    log.info(f"{name}: training {cfg.model} into {run_dir} ...")
    train_model(split_dir, run_dir, cfg, overwrite=True, verbose=0)
    done = runs.read_config(run_dir)
    log.info(
        f"{name}: done, best val_accuracy {done['best_val_accuracy']:.3f} at epoch "
        f"{done['best_epoch']} (phase {done['best_phase']})"
    )
    return run_dir


def ensure_main_run(ctx: Context, **overrides) -> Path:
    """Notebook 10's run (Study A's ResNet50 on ``ctx.dataset``: wbc10 unless the notebook chose
    another, e.g. bloodmnist), trained here when missing or stale."""
    split_dir = ensure_splits(ctx, ctx.dataset)
    return ensure_run(ctx, f"{ctx.dataset}_resnet50", main_run_config(ctx, **overrides), split_dir)


def ensure_baselines(ctx: Context, models=("cnn1", "cnn2"), dataset: str = "all4", **overrides) -> dict[str, Path]:
    """Study B's baselines on ``dataset``, ``{model: run_dir}``, trained when missing or stale."""
    split_dir = ensure_splits(ctx, dataset)
    return {m: ensure_run(ctx, f"{dataset}_{m}", baseline_config(ctx, m, **overrides), split_dir) for m in models}
