"""Where things live and how big a run is: data directory, output folder, run profiles.

Environment variables (all optional):

- ``WBC_DATA_DIR``: folder holding the real downloads under their standard names
  (``PBC_dataset_normal_DIB/``, ``AML-Cytomorphology_LMU/``, ``ALL_Kaggle/``, ``bloodmnist_<size>.npz``).
  Unset: the generated demo data is used (and the notebooks say so in a banner).
- ``WBC_PROFILE``: ``ci`` (tiny, minutes on CI), ``demo`` (a few minutes on a laptop CPU) or
  ``full`` (the studies' settings, real data and a GPU). Default ``demo``.
- ``WBC_OUTPUT_DIR``: where generated data, stage outputs, runs and figures go.
  Default ``outputs/`` at the repository root (or in the current folder outside the repo).
- ``WBC_REAL_SAMPLE``: path of the small real sample used by tests (tests skip when unset).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from wbc.errors import WbcError

PBC_DIRNAME = "PBC_dataset_normal_DIB"
LMU_DIRNAME = "AML-Cytomorphology_LMU"
ALL_DIRNAME = "ALL_Kaggle"
#: Where each source lives under the data folder.
SOURCE_DIRS = {"PBC": PBC_DIRNAME, "LMU": LMU_DIRNAME, "ALL": ALL_DIRNAME}
SPLITS = ("train", "val", "test")
#: The manifests a data folder gives: one per source (own labels), and the two studies' sets.
DATASETS = ("pbc", "lmu", "all", "wbc10", "all4")
#: The notebooks also take BloodMNIST: PBC's 17,092 cells as one MedMNIST file, ``bloodmnist.npz``
#: (28 px) or ``bloodmnist_<size>.npz`` (64, 128, 224 px), with MedMNIST's official split kept.
NOTEBOOK_DATASETS = (*DATASETS, "bloodmnist")
BLOODMNIST_GLOB = "bloodmnist*.npz"
#: Split fractions of the studies: Study A 80/12/8 (wbc10), Study B 70/15/15 (all4 and the rest).
#: BloodMNIST: MedMNIST's own proportions (11,959 / 1,712 / 3,421 images), for a re-split of it;
#: without fractions the course keeps its official split.
DEFAULT_FRACTIONS = {"wbc10": (0.8, 0.12, 0.08), "all4": (0.7, 0.15, 0.15), "bloodmnist": (0.7, 0.1, 0.2)}


@dataclass(frozen=True)
class Profile:
    """Every size knob of a run; notebooks and the CLI read their defaults from here."""

    name: str
    demo_per_class: int  # images per class and source in the generated demo data
    cap: int  # per-class cap of the balanced wbc10 set
    image_size: int  # training image size (square)
    preprocess_size: int  # size images are normalised to on disk
    batch_size: int
    epochs: int
    fine_tune_epochs: int  # second phase of ResNet50 fine-tuning
    learning_rate: float
    study_epochs: int  # epochs per configuration in the hyperparameter study
    cnn_epochs: int = 1  # epochs of the small from-scratch models (cnn1, cnn2, small_resnet): fast, need more
    cnn_min_epochs: int = 0  # EarlyStopping never stops those before this epoch

    def as_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, Profile] = {
    "ci": Profile(
        "ci",
        demo_per_class=12,
        cap=1300,
        image_size=64,
        preprocess_size=96,
        batch_size=16,
        epochs=1,
        fine_tune_epochs=1,
        learning_rate=1e-3,
        study_epochs=1,
        cnn_epochs=1,
        cnn_min_epochs=0,
    ),
    "demo": Profile(
        "demo",
        demo_per_class=40,
        cap=1300,
        image_size=80,  # ResNet50's last grid is still 3x3 (as at 96 px), at 0.69 of the compute
        preprocess_size=128,
        batch_size=32,
        epochs=5,
        fine_tune_epochs=2,
        learning_rate=1e-3,
        study_epochs=6,
        cnn_epochs=20,
        cnn_min_epochs=10,
    ),
    "full": Profile(
        "full",
        demo_per_class=40,
        cap=1300,
        image_size=128,
        preprocess_size=400,
        batch_size=32,
        epochs=10,
        fine_tune_epochs=5,
        learning_rate=1e-3,
        study_epochs=10,
        cnn_epochs=40,
        cnn_min_epochs=15,
    ),
}


def get_profile(name: str | None = None, **overrides) -> Profile:
    """The profile ``name`` (default: ``$WBC_PROFILE`` or ``demo``), with fields overridden."""
    name = name or os.environ.get("WBC_PROFILE", "demo")
    if name not in PROFILES:
        raise WbcError(
            f"unknown profile {name!r}: choose one of {', '.join(PROFILES)} (set WBC_PROFILE or pass profile=...)"
        )
    return replace(PROFILES[name], **overrides)


def repo_root() -> Path | None:
    """The repository root when running from a checkout, else None."""
    for folder in [Path.cwd(), *Path.cwd().parents, *Path(__file__).resolve().parents]:
        if (folder / "pyproject.toml").is_file() and (folder / "lib" / "wbc").is_dir():
            return folder
    return None


def output_dir() -> Path:
    """Root of everything the project writes (``$WBC_OUTPUT_DIR`` or ``<repo>/outputs``)."""
    env = os.environ.get("WBC_OUTPUT_DIR")
    if env:
        return Path(env).expanduser().resolve()
    root = repo_root()
    return (root / "outputs") if root else (Path.cwd() / "wbc-outputs").resolve()


def demo_data_dir(per_class: int | None = None) -> Path:
    """Where the generated demo dataset with ``per_class`` images per class and source lives (default:
    the profile's). One folder per size, so the ``ci`` and ``demo`` profiles never regenerate each
    other's data, and can run side by side."""
    if per_class is None:
        per_class = get_profile().demo_per_class
    return output_dir() / f"demo-data-{int(per_class)}"


def resolve_data_dir(value: str | os.PathLike | None = None, *, must_exist: bool = True) -> Path | None:
    """The one data-folder rule: ``value`` when given, else ``$WBC_DATA_DIR``, else None (the
    caller decides: demo data in the notebooks, an error in the CLI). The folder must exist
    unless ``must_exist=False`` (a download creates it); a file is never one."""
    given = value if value is not None else (os.environ.get("WBC_DATA_DIR") or None)
    if given is None:
        return None
    path = Path(given).expanduser().resolve()
    if (path.exists() or must_exist) and not path.is_dir():
        where = f"WBC_DATA_DIR={given!r}" if value is None else f"data folder {given}"
        raise WbcError(
            f"{where} does not exist or is not a folder. Point it at the folder that holds "
            f"{PBC_DIRNAME}/, {LMU_DIRNAME}/, {ALL_DIRNAME}/ and/or a bloodmnist_<size>.npz"
            + (", or unset it to use demo data." if value is None else ".")
        )
    return path


def data_dir_argument(value: str | os.PathLike | None, *, must_exist: bool = True) -> Path:
    """The data folder a command works on (``--data-dir`` or ``$WBC_DATA_DIR``); one is required."""
    path = resolve_data_dir(value, must_exist=must_exist)
    if path is None:
        raise WbcError(
            "no data folder: pass --data-dir DIR or set WBC_DATA_DIR "
            "(python -m wbc demo --out DIR writes a small demo one)"
        )
    return path


def real_sample_dir() -> Path | None:
    """``$WBC_REAL_SAMPLE`` (the small real sample) when set and present, else None."""
    env = os.environ.get("WBC_REAL_SAMPLE")
    return Path(env).resolve() if env and Path(env).is_dir() else None


def data_tag(data_dir: Path) -> str:
    """A short name for a data folder, used to keep stage outputs of different data apart."""
    if data_dir.resolve().parent == output_dir().resolve() and data_dir.name.startswith("demo-data-"):
        return "demo"  # the generated demo data, of any size (demo_data_dir)
    digest = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:8]
    return f"{data_dir.name}-{digest}"


def work_dir(data_dir: Path, profile: Profile | str) -> Path:
    """Stage outputs (manifests, processed images, splits, runs) for one data folder + profile."""
    name = profile if isinstance(profile, str) else profile.name
    return output_dir() / "work" / f"{data_tag(data_dir)}-{name}"


class _ConsoleHandler(logging.StreamHandler):
    """Plain lines on the *current* ``sys.stdout`` (warnings and errors on ``sys.stderr``), looked
    up at each message: a notebook or a test that swaps the streams still sees everything."""

    def __init__(self):
        super().__init__()
        self._warning = False
        self.setFormatter(logging.Formatter("%(message)s"))

    @property
    def stream(self):
        return sys.stderr if self._warning else sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # the streams are looked up at each message
        pass

    def emit(self, record: logging.LogRecord) -> None:
        self._warning = record.levelno >= logging.WARNING
        super().emit(record)


def show_logs(level: int = logging.INFO) -> logging.Handler:
    """Show the library's log messages (logger ``wbc``) as plain lines: information on stdout,
    warnings on stderr. The CLI and ``course.setup_notebook`` call it; the library itself only
    logs. Calling it again keeps one handler, so no message appears twice."""
    logger = logging.getLogger("wbc")
    handler = next((h for h in logger.handlers if type(h).__name__ == "_ConsoleHandler"), None)
    if handler is None:
        handler = _ConsoleHandler()
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return handler
