"""Readers: turn a raw download folder into a manifest DataFrame, reporting what was skipped.

Every reader returns ``(manifest, skipped)``:

- ``manifest``: one row per image, columns ``path, source, source_label, sub_label, label``
  (plus ``version`` for ALL), sorted by ``path``; ``label`` is the dataset's own class.
- ``skipped``: columns ``path, reason``; ``reason`` reads ``"<kind>: <detail>"`` (kinds: hidden
  file, not an image, empty file, unreadable, unknown folder, empty class folder, missing class
  folder, outside the class folders, unknown prefix, duplicate, unreadable name). Duplicate and
  unknown-prefix rows are *reported but kept* in the manifest; everything else is left out of it.

A file name that is not valid UTF-8 (written on another system, e.g. Latin-1 ``0xE9``) cannot
be written into a CSV and read back as the same path, so it is reported as ``unreadable name``
with its bytes shown as ``\\xNN``, never a crash of ``manifest``.

Files are checked by name, size and their first bytes (JPEG/PNG/TIFF signature), not decoded,
so reading the full 17k-image PBC release takes seconds. Raw files are only ever read.
"""

from __future__ import annotations

import hashlib
import os
import re
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from wbc.config import ALL_DIRNAME, BLOODMNIST_GLOB, LMU_DIRNAME, PBC_DIRNAME, SOURCE_DIRS
from wbc.errors import LayoutError, WbcError
from wbc.fileio import display_path, file_digest, is_utf8_name
from wbc.images import sniff_format
from wbc.labels import ALL_CLASSES, ALL_VERSIONS, LMU_CODES, PBC_CLASSES, PBC_PREFIXES

MANIFEST_COLUMNS = ["path", "source", "source_label", "sub_label", "label"]
SKIPPED_COLUMNS = ["path", "reason"]
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".tif", ".tiff")
DATASET_DIRS = {key.lower(): name for key, name in SOURCE_DIRS.items()}
BAD_NAME_REASON = (
    "unreadable name: not valid UTF-8 (the bytes are shown as \\xNN); rename it "
    "(e.g. convmv -f latin1 -t utf8) to include it"
)
_PREFIX = re.compile(r"^([A-Za-z]+)_")


# ---------------------------------------------------------------- single files


def check_image_file(path: Path) -> str | None:
    """None when ``path`` looks like an image; otherwise the reason to skip it."""
    if path.name.startswith("."):
        return "hidden file: not an image (e.g. macOS metadata such as .DS_Store)"
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not an image: extension {path.suffix or '(none)'!r} is not one of {', '.join(IMAGE_EXTENSIONS)}"
    try:
        if path.stat().st_size == 0:
            return "empty file: 0 bytes"
        with open(path, "rb") as fh:
            head = fh.read(16)
        if sniff_format(head) not in ("JPEG", "PNG", "TIFF"):
            return f"not an image: first bytes {head[:4].hex(' ')} match no JPEG/PNG/TIFF signature"
    except OSError as exc:
        return f"unreadable: {exc.strerror or exc}"
    return None


def pbc_prefix(filename: str) -> str:
    """The PBC file-name prefix (``"MMY"`` for ``MMY_123.jpg``), or ``""`` when there is none."""
    match = _PREFIX.match(filename)
    return match.group(1).upper() if match else ""


def summarise_reasons(skipped: pd.DataFrame) -> pd.Series:
    """Counts of skipped/reported items per kind (the text before the first ``:``)."""
    if skipped.empty:
        return pd.Series(dtype=int, name="count")
    kinds = skipped["reason"].astype(str).str.split(":", n=1).str[0]
    return kinds.value_counts().rename("count")


# ---------------------------------------------------------------- layout checks


def _listing(folder: Path, limit: int = 12) -> str:
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in folder.iterdir())
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return (", ".join(names[:limit]) + more) if names else "nothing (the folder is empty)"


def _has_images(folder: Path) -> bool:
    return any(p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS for p in folder.iterdir())


def _layout_error(root: Path, dirname: str, expected: Sequence[str]) -> LayoutError:
    """A LayoutError that says what was expected, what was found and how to fix it."""
    want = f"{dirname}/ with class folders {', '.join(expected)}"
    if not root.exists():
        return LayoutError(
            f"{root} does not exist. Expected {want}. Download the data (python -m wbc download ...) or fix the path."
        )
    if not root.is_dir():
        return LayoutError(f"{root} is a file, not a folder. Expected {want}.")
    if (root / dirname).is_dir():
        return LayoutError(
            f"{root} holds {dirname}/ (one level too shallow): pass {root / dirname} "
            f"to this reader, or give {root} as the data folder (--data-dir)."
        )
    if root.name in expected or _has_images(root):
        return LayoutError(
            f"{root} looks like a single class folder (one level too deep): "
            f"point at its parent {root.parent}, which should hold {', '.join(expected)}."
        )
    return LayoutError(
        f"{root} has none of the expected class folders ({', '.join(expected)}); "
        f"found {_listing(root)}. Point at the {dirname}/ folder as unpacked from "
        "the download (see data/README.md)."
    )


def locate_dataset(name: str, data_dir: str | os.PathLike) -> Path:
    """The standard sub-folder of dataset ``name`` (pbc/lmu/all) under ``data_dir``, checked."""
    if name not in DATASET_DIRS:
        raise WbcError(f"unknown dataset {name!r}: choose one of {', '.join(DATASET_DIRS)}")
    data_dir = Path(data_dir).expanduser()
    dirname = DATASET_DIRS[name]
    fix = f"point --data-dir (or WBC_DATA_DIR) at the folder that CONTAINS {dirname}/"
    if not data_dir.is_dir():
        raise LayoutError(f"data folder {data_dir} does not exist or is not a folder; {fix}.")
    folder = data_dir / dirname
    if folder.is_dir():
        return folder.resolve()
    expected = {"pbc": PBC_CLASSES, "lmu": tuple(LMU_CODES), "all": ALL_VERSIONS}[name]
    present = {p.name for p in data_dir.iterdir() if p.is_dir()}
    if data_dir.name == dirname or present & set(expected):
        raise LayoutError(
            f"{data_dir} is the {dirname}/ folder itself (one level too deep); {fix}, i.e. {data_dir.resolve().parent}."
        )
    if data_dir.name in expected or (data_dir.parent.name == dirname):
        raise LayoutError(
            f"{data_dir} is a class folder inside {dirname}/ (two levels too deep); "
            f"{fix}, i.e. {data_dir.resolve().parent.parent}."
        )
    deeper = sorted(p for p in data_dir.iterdir() if p.is_dir() and (p / dirname).is_dir())
    if deeper:
        raise LayoutError(
            f"{dirname}/ is inside {deeper[0]} (one level too shallow); {fix}, i.e. --data-dir {deeper[0]}."
        )
    raise LayoutError(
        f"expected {folder}/ but found {_listing(data_dir)} in {data_dir}; {fix} "
        f"(python -m wbc download {name} --data-dir {data_dir} fetches it)."
    )


# ---------------------------------------------------------------- folder scan


def _scan(
    root: Path, source: str, expected: Sequence[str], sub_label: Callable[[str, str], tuple[str, str | None]]
) -> tuple[list[dict], list[dict]]:
    """Read ``root/<class>/<file>``; return manifest rows and skipped rows.

    ``sub_label(class, filename)`` returns ``(sub_label, problem or None)``.
    """
    rows: list[dict] = []
    skipped: list[dict] = []
    for entry in sorted(root.iterdir()):
        if not is_utf8_name(entry.name):
            skipped.append({"path": display_path(entry), "reason": BAD_NAME_REASON})
            continue
        if entry.is_file():
            reason = check_image_file(entry) or "outside the class folders: not read as an image"
            skipped.append({"path": str(entry), "reason": reason})
            continue
        if entry.name not in expected:
            count = sum(1 for p in entry.rglob("*") if p.is_file())
            skipped.append(
                {
                    "path": str(entry),
                    "reason": f"unknown folder: {count} file(s) not read; expected class folders {', '.join(expected)}",
                }
            )
            continue
        children = sorted(entry.iterdir())
        if not children:
            skipped.append({"path": str(entry), "reason": "empty class folder: no images"})
        for child in children:
            if not is_utf8_name(child.name):
                skipped.append({"path": display_path(child), "reason": BAD_NAME_REASON})
                continue
            if child.is_dir():
                skipped.append(
                    {
                        "path": str(child),
                        "reason": f"unknown folder: sub-folder inside class folder {entry.name}/ not read",
                    }
                )
                continue
            unreadable = check_image_file(child)
            if unreadable:
                skipped.append({"path": str(child), "reason": unreadable})
                continue
            sub, problem = sub_label(entry.name, child.name)
            if problem:
                skipped.append({"path": str(child), "reason": problem})
            rows.append(
                {
                    "path": str(child),
                    "source": source,
                    "source_label": entry.name,
                    "sub_label": sub,
                    "label": entry.name,
                    "_size": child.stat().st_size,
                }
            )
    present = {p.name for p in root.iterdir() if p.is_dir()}
    for name in expected:
        if name not in present:
            skipped.append(
                {
                    "path": str(root / name),
                    "reason": f"missing class folder: {name}/ is part of the standard layout but absent",
                }
            )
    return rows, skipped


def _no_sub_label(_folder: str, _filename: str) -> tuple[str, None]:
    return "", None


def _pbc_sub_label(folder: str, filename: str) -> tuple[str, str | None]:
    prefix = pbc_prefix(filename)
    known = PBC_PREFIXES[folder]
    if prefix in known:
        return prefix, None
    return prefix, (
        f"unknown prefix: {prefix or '(none)'!r} is not a known prefix of {folder}/ "
        f"({', '.join(known)}); kept in the manifest with sub_label {prefix!r}"
    )


def find_cross_label_duplicates(rows: pd.DataFrame, head_bytes: int = 1 << 16) -> pd.DataFrame:
    """Report byte-identical files filed under different labels (``path, reason``).

    Only files that share their size with a file of another label are hashed (first
    ``head_bytes``, then the whole file with ``file_digest``), so this stays fast.
    """

    def multi_label(df: pd.DataFrame, key: str) -> pd.DataFrame:
        return df[df.groupby(key)["label"].transform("nunique") > 1]

    sizes = rows["_size"] if "_size" in rows else rows["path"].map(lambda p: os.stat(p).st_size)
    cand = multi_label(rows.assign(_size=sizes), "_size")
    if cand.empty:
        return pd.DataFrame(columns=SKIPPED_COLUMNS)

    heads = cand["path"].map(lambda p: _head_digest(p, head_bytes))
    cand = cand.assign(_key=cand["_size"].astype(str) + ":" + heads)
    cand = multi_label(cand, "_key")
    if cand.empty:
        return pd.DataFrame(columns=SKIPPED_COLUMNS)
    cand = multi_label(cand.assign(_digest=cand["path"].map(file_digest)), "_digest")
    out = []
    for _, group in cand.groupby("_digest"):
        for row in group.itertuples():
            others = group[group["label"] != row.label]
            where = "; ".join(f"{p} (label {lab})" for p, lab in zip(others["path"], others["label"]))
            out.append(
                {
                    "path": row.path,
                    "reason": f"duplicate: byte-identical to {where}, filed under "
                    "another label; both rows kept in the manifest",
                }
            )
    return pd.DataFrame(out, columns=SKIPPED_COLUMNS).sort_values("path", ignore_index=True)


def _head_digest(path: str, n: int) -> str:
    """SHA-256 of the first ``n`` bytes: a cheap first filter before hashing whole files."""
    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read(n)).hexdigest()


def _finish(
    rows: list[dict], skipped: list[dict], columns: list[str], check_duplicates: bool
) -> tuple[pd.DataFrame, pd.DataFrame]:
    manifest = pd.DataFrame(rows, columns=columns + ["_size"]).sort_values("path", ignore_index=True)
    skipped_df = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    skipped_df["path"] = skipped_df["path"].map(display_path)  # always writable as UTF-8 text
    if check_duplicates and not manifest.empty:
        skipped_df = pd.concat([skipped_df, find_cross_label_duplicates(manifest)], ignore_index=True)
    skipped_df = skipped_df.sort_values(["path", "reason"], ignore_index=True)
    return manifest[columns], skipped_df


def _read_classes(
    root: str | os.PathLike,
    source: str,
    dirname: str,
    expected: Sequence[str],
    sub_label: Callable,
    check_duplicates: bool,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    root = Path(root).expanduser()
    if not root.is_dir() or not any((root / name).is_dir() for name in expected):
        raise _layout_error(root, dirname, expected)
    rows, skipped = _scan(root.resolve(), source, expected, sub_label)
    return _finish(rows, skipped, MANIFEST_COLUMNS, check_duplicates)


# ---------------------------------------------------------------- public readers


def read_pbc(root: str | os.PathLike, check_duplicates: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``PBC_dataset_normal_DIB/`` (8 class folders of JPEGs); sub_label = file-name prefix."""
    return _read_classes(root, "PBC", PBC_DIRNAME, PBC_CLASSES, _pbc_sub_label, check_duplicates)


def read_lmu(root: str | os.PathLike, check_duplicates: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``AML-Cytomorphology_LMU/`` (15 class-code folders of RGBA TIFFs)."""
    return _read_classes(root, "LMU", LMU_DIRNAME, tuple(LMU_CODES), _no_sub_label, check_duplicates)


def read_all(
    root: str | os.PathLike, version: str = "Original", check_duplicates: bool = True
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read ``ALL_Kaggle/<version>/{Benign,Early,Pre,Pro}``; ``version`` may also be ``"both"``."""
    versions = ALL_VERSIONS if version == "both" else (version,)
    if not set(versions) <= set(ALL_VERSIONS):
        raise WbcError(f"unknown ALL version {version!r}: choose Original, Segmented or both")
    root = Path(root).expanduser()
    if not root.is_dir() or not any((root / v).is_dir() for v in versions):
        if root.is_dir() and any((root / c).is_dir() for c in ALL_CLASSES):
            raise LayoutError(
                f"{root} holds the class folders directly (one level too deep): point at "
                f"its parent {root.resolve().parent}, which should hold {'/, '.join(ALL_VERSIONS)}/."
            )
        raise _layout_error(root, ALL_DIRNAME, versions)
    root = root.resolve()
    manifests, skipped = [], []
    for entry in sorted(root.iterdir()):
        if not is_utf8_name(entry.name):
            skipped.append(pd.DataFrame([{"path": display_path(entry), "reason": BAD_NAME_REASON}]))
            continue
        if entry.name not in ALL_VERSIONS:
            reason = (
                (check_image_file(entry) or "outside the version folders: not read")
                if entry.is_file()
                else f"unknown folder: expected only {', '.join(ALL_VERSIONS)}/"
            )
            skipped.append(pd.DataFrame([{"path": str(entry), "reason": reason}]))
    for v in versions:
        folder = root / v
        if not folder.is_dir():
            skipped.append(pd.DataFrame([{"path": str(folder), "reason": f"missing class folder: {v}/ absent"}]))
            continue
        m, s = _read_classes(folder, "ALL", f"{ALL_DIRNAME}/{v}", ALL_CLASSES, _no_sub_label, check_duplicates)
        manifests.append(m.assign(version=v))
        skipped.append(s)
    manifest = pd.concat(manifests, ignore_index=True).sort_values("path", ignore_index=True)
    skipped_df = pd.concat(skipped, ignore_index=True).sort_values(["path", "reason"], ignore_index=True)
    return manifest, skipped_df


def read_dataset(name: str, data_dir: str | os.PathLike, **kwargs) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Read dataset ``name`` (pbc, lmu, all) from its standard sub-folder of ``data_dir``."""
    reader: dict[str, Callable[..., tuple[pd.DataFrame, pd.DataFrame]]] = {
        "pbc": read_pbc,
        "lmu": read_lmu,
        "all": read_all,
    }
    folder = locate_dataset(name, data_dir)
    return reader[name](folder, **kwargs)


# ---------------------------------------------------------------- BloodMNIST

BLOODMNIST_CLASSES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
BLOODMNIST_SPLITS: tuple[str, ...] = ("train", "val", "test")


@dataclass
class BloodMnist:
    """The arrays of a BloodMNIST ``.npz``: ``images[split]`` (N, H, W, 3) uint8 RGB,
    ``labels[split]`` (N,) int indices into ``classes`` (MedMNIST's order)."""

    images: dict[str, np.ndarray]
    labels: dict[str, np.ndarray]
    classes: tuple[str, ...] = BLOODMNIST_CLASSES
    source_path: str = ""


def bloodmnist_size(npz_path: str | os.PathLike) -> int:
    """The image size a BloodMNIST file name promises: ``bloodmnist.npz`` 28, ``bloodmnist_128.npz`` 128."""
    match = re.fullmatch(r"bloodmnist(?:_(\d+))?\.npz", Path(npz_path).name)
    if not match:
        raise WbcError(f"{npz_path}: not a BloodMNIST file name (bloodmnist.npz or bloodmnist_<size>.npz)")
    return int(match.group(1) or 28)


def locate_bloodmnist(data_dir: str | os.PathLike, image_size: int | None = None) -> Path:
    """The ``bloodmnist[_SIZE].npz`` in ``data_dir``; with several, the smallest at least ``image_size``
    px (no upscaling), else the largest."""
    data_dir = Path(data_dir).expanduser()
    found = sorted(
        (p for p in data_dir.glob(BLOODMNIST_GLOB) if re.fullmatch(r"bloodmnist(_\d+)?\.npz", p.name)),
        key=bloodmnist_size,
    )
    if not found:
        raise LayoutError(
            f"no bloodmnist.npz or bloodmnist_<size>.npz in {data_dir}; fetch one with "
            f"python -m wbc download bloodmnist --size 128 --data-dir {data_dir}"
        )
    big_enough = [p for p in found if image_size is None or bloodmnist_size(p) >= image_size]
    return (big_enough[0] if big_enough else found[-1]).resolve()


def read_bloodmnist(npz_path: str | os.PathLike) -> BloodMnist:
    """Load ``bloodmnist[_64|_128|_224].npz`` with numpy and check keys, shapes and label range."""
    path = Path(npz_path)
    if not path.is_file():
        raise WbcError(f"BloodMNIST file {path} does not exist (python -m wbc download bloodmnist fetches it)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        raise WbcError(f"{path} is not a readable .npz file (truncated or corrupt?): {exc}") from exc
    images, labels = {}, {}
    for split in BLOODMNIST_SPLITS:
        for key in (f"{split}_images", f"{split}_labels"):
            if key not in data:
                raise WbcError(f"{path} lacks the array {key!r} (found {sorted(data)}): not a MedMNIST file?")
        x, y = data[f"{split}_images"], data[f"{split}_labels"].reshape(-1)
        if x.ndim == 3:  # grayscale MedMNIST sets have no channel axis
            x = np.repeat(x[..., None], 3, axis=-1)
        if x.ndim != 4 or x.shape[-1] != 3 or len(x) != len(y):
            raise WbcError(
                f"{path}: {split} arrays have shapes {x.shape} / {y.shape}; expected (N, H, W, 3) images and N labels"
            )
        if not np.issubdtype(y.dtype, np.integer) or x.dtype != np.uint8:
            raise WbcError(f"{path}: {split} arrays are {x.dtype} / {y.dtype}; expected uint8 images, integer labels")
        if len(y) and (y.min() < 0 or y.max() >= len(BLOODMNIST_CLASSES)):
            raise WbcError(f"{path}: {split}_labels outside 0..{len(BLOODMNIST_CLASSES) - 1}")
        images[split], labels[split] = x.astype(np.uint8, copy=False), y.astype(np.int64)
    return BloodMnist(images, labels, BLOODMNIST_CLASSES, str(path))


_BLOODMNIST_PREFIX = {
    "basophil": "BA",
    "eosinophil": "EO",
    "erythroblast": "ERB",
    "ig": "IG",
    "lymphocyte": "LY",
    "monocyte": "MO",
    "neutrophil": "NEUTROPHIL",
    "platelet": "PLATELET",
}


def write_bloodmnist_folders(data: BloodMnist, out_root: str | os.PathLike, progress: bool = False) -> pd.DataFrame:
    """Write the arrays as PNGs in the PBC layout: ``out_root/<class>/<PREFIX>_<split>_<index>.png``.

    Returns a manifest (``source`` = BloodMNIST, plus MedMNIST's fixed ``split``). Existing files
    are kept (re-runs are cheap: give each .npz its own ``out_root``); each new file is written
    atomically.
    """
    import cv2
    from tqdm.auto import tqdm

    from wbc.fileio import write_bytes_atomic

    out_root = Path(out_root).expanduser().resolve()
    rows = []
    total = sum(len(data.labels[split]) for split in BLOODMNIST_SPLITS)
    bar = tqdm(total=total, desc="BloodMNIST to PNG", unit="img", disable=not progress)
    for split in BLOODMNIST_SPLITS:
        for index, (image, label) in enumerate(zip(data.images[split], data.labels[split])):
            bar.update()
            name = data.classes[int(label)]
            prefix = _BLOODMNIST_PREFIX[name]
            target = out_root / name / f"{prefix}_{split}_{index:05d}.png"
            if not target.exists():
                ok, png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
                if not ok:
                    raise WbcError(f"could not encode {split} image {index} of {data.source_path} as PNG")
                write_bytes_atomic(target, png.tobytes())
            rows.append(
                {
                    "path": str(target),
                    "source": "BloodMNIST",
                    "source_label": name,
                    "sub_label": prefix,
                    "label": name,
                    "split": split,
                }
            )
    bar.close()
    return pd.DataFrame(rows, columns=MANIFEST_COLUMNS + ["split"]).sort_values("path", ignore_index=True)
