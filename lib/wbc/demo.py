"""Synthetic demo data: smear-like single-cell images in the exact layouts of the real downloads.

``generate_demo(out)`` writes, under ``out``::

    PBC_dataset_normal_DIB/<folder>/<PREFIX>_<n>.jpg        JPEG 360x363, 8 folders
    AML-Cytomorphology_LMU/<CODE>/<CODE>_<nnnn>.tiff       RGBA TIFF 400x400, 15 class codes
    ALL_Kaggle/{Original,Segmented}/<class>/WBC-...-<nnn>.jpg   JPEG 224x224, same names in both

Each image is drawn with OpenCV from the morphology table ``CELL_TYPES`` below (cell size,
nucleus shape, colours, granules), so a small CNN can learn the classes, with per-image jitter
(stain colour, rotation, position, size, noise, blur) so it is not trivial. ALL fields show one
dominant white cell near the centre (sometimes one or two more) among red cells, at a higher
magnification than the real low-power fields, so the class signal survives resizing to 64-96 px
for the small CNNs. The same cell type
is drawn for a PBC folder/prefix and the LMU code it is merged with (``SOURCES``). The two
sources differ in background tint and scale, so a domain shift exists, as in the real data.

With ``quirks=True`` the real releases' quirks are reproduced, so the course can teach them:
a non-image ``neutrophil/.DS_169665.jpg``, one image filed under two PBC classes, one
byte-identical pair in ALL ``Pro`` (both versions) and a few images with a black band.

Everything is deterministic from ``seed``: the same seed gives byte-identical files.
"""

from __future__ import annotations

import functools
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import cv2
import numpy as np
import pandas as pd

from wbc.config import SOURCE_DIRS
from wbc.download import ALL_COUNTS, LMU_COUNTS
from wbc.errors import WbcError
from wbc.fileio import write_bytes_atomic
from wbc.labels import ALL_VERSIONS

# The morphology table (cell types, what is drawn where, the look of each source) is data:
# resources/demo_cells.json, whose "_notes" explain every field.
_TABLE = json.loads((resources.files("wbc") / "resources" / "demo_cells.json").read_text(encoding="utf-8"))
CELL_TYPES: dict[str, dict] = _TABLE["cell_types"]
SOURCES: dict[str, dict[str, dict[str, str | list[str]]]] = _TABLE["sources"]
STYLES: dict[str, dict] = _TABLE["styles"]
# Images per class in the full releases (the download registry): file numbers are drawn from this range.
RELEASE_COUNTS: dict[str, int] = {**LMU_COUNTS, **{k.split("/")[1]: n for k, n in ALL_COUNTS.items()}}

JUNK_NAME = ".DS_169665.jpg"  # the real PBC release ships this macOS metadata file in neutrophil/
_BANK = 512  # side of the noise bank, at least the largest image side
QUIRKS = ("non_image", "duplicate_across_classes", "duplicate_pair", "black_band")


@dataclass(frozen=True)
class _Item:
    """One file to write: where, what is drawn, and the per-image seed."""

    dataset: str
    folder: str  # relative to the dataset folder (ALL: "<version>/<class>")
    name: str
    label: str
    key: tuple[int, ...]  # per-image seed key: independent of the order files are written
    quirk: str = ""


# ----------------------------------------------------------------------------- public API


def generate_demo(
    out: str | Path, per_class: int = 12, seed: int = 0, *, quirks: bool = True, progress: bool = False
) -> pd.DataFrame:
    """Write the synthetic PBC, LMU and ALL datasets under ``out``; return what was written.

    ``per_class`` images go into every PBC folder *and* file-name prefix (so ``ig/`` gets four
    times as many), every LMU class code, and every ALL class (in both versions). The returned
    DataFrame has one row per file: ``path, dataset, folder, label, quirk`` (``label`` is the
    cell type drawn; ``quirk`` is empty or one of ``QUIRKS``). Files are written atomically and
    a file already holding the same bytes is left alone, so a re-run is safe; a folder holding
    files this generation would not write (other data, another ``per_class``) is refused.
    """
    if isinstance(per_class, bool) or not isinstance(per_class, (int, np.integer)) or per_class < 1:
        raise WbcError(f"per_class must be a positive integer, got {per_class!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise WbcError(f"seed must be a non-negative integer, got {seed!r}")
    out = Path(out).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise WbcError(f"demo output {out} exists and is not a folder")
    plan = _plan(int(per_class), int(seed), quirks)
    _check_foreign_files(out, plan)

    rows: list[dict] = []
    rendered: dict[tuple, bytes] = {}
    items = plan
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(plan, desc="demo images", unit="img")
    for item in items:
        path = out / SOURCE_DIRS[item.dataset] / item.folder / item.name
        data = _render_item(item, seed, rendered)
        _write_if_changed(path, data)
        rows.append(
            {
                "path": str(path),
                "dataset": item.dataset,
                "folder": item.folder,
                "label": item.label,
                "quirk": item.quirk,
            }
        )
    return pd.DataFrame(rows, columns=["path", "dataset", "folder", "label", "quirk"])


def draw_cell_image(cell_type: str, dataset: str = "PBC", seed: int = 0) -> np.ndarray:
    """One synthetic image (BGR uint8) of ``cell_type`` in the style of ``dataset`` (PBC/LMU/ALL)."""
    if cell_type not in CELL_TYPES:
        raise WbcError(f"unknown cell type {cell_type!r}: choose one of {', '.join(CELL_TYPES)}")
    if dataset not in STYLES:
        raise WbcError(f"unknown dataset style {dataset!r}: choose one of {', '.join(STYLES)}")
    rng = np.random.default_rng(seed)
    if dataset == "ALL":
        return _draw_all_field(cell_type, rng)[0]
    return _draw_smear(cell_type, dataset, rng)


# ----------------------------------------------------------------------------- the plan


def _plan(per_class: int, seed: int, quirks: bool) -> list[_Item]:
    """Every file of one generation, with names like the real releases and the quirks placed."""
    rng = np.random.default_rng([seed, 7919])
    items: list[_Item] = []
    # PBC: ids in 1..999999 without zero padding, unique over the dataset (169665 is the junk file's)
    n_pbc = sum(len(p) for p in SOURCES["PBC"].values()) * per_class + 1
    ids = iter(int(i) + 1 for i in rng.choice(999999, size=n_pbc + 1, replace=False) if i != 169664)
    for d, (folder, prefixes) in enumerate(SOURCES["PBC"].items()):
        for p, (prefix, cell) in enumerate(prefixes.items()):
            for i in range(per_class):
                label = _pick(cell, rng)
                items.append(_Item("PBC", folder, f"{prefix}_{next(ids)}.jpg", label, (0, d, p, i)))
    for d, (code, prefixes) in enumerate(SOURCES["LMU"].items()):
        numbers = _numbers(rng, max(RELEASE_COUNTS[code], per_class), per_class)
        cell = prefixes[code]
        assert isinstance(cell, str)  # a list (a choice of labels) is PBC's only
        items += [_Item("LMU", code, f"{code}_{n:04d}.tiff", cell, (1, d, 0, i)) for i, n in enumerate(numbers)]
    for d, (klass, prefixes) in enumerate(SOURCES["ALL"].items()):
        ((stem, cell),) = prefixes.items()
        assert isinstance(cell, str)  # a list (a choice of labels) is PBC's only
        numbers = _numbers(rng, max(RELEASE_COUNTS[klass], per_class + 1), per_class)
        for version in ALL_VERSIONS:
            items += [
                _Item("ALL", f"{version}/{klass}", f"{stem}-{n:03d}.jpg", cell, (2, d, 0, i))
                for i, n in enumerate(numbers)
            ]
    return _add_quirks(items, rng, next(ids)) if quirks else items


def _add_quirks(items: list[_Item], rng: np.random.Generator, spare_id: int) -> list[_Item]:
    """Place the real releases' quirks: junk file, cross-class duplicate, Pro pair, black bands."""
    out = list(items)
    # one eosinophil image also filed as a band neutrophil (same bytes, two labels)
    eos = next(i for i, it in enumerate(out) if it.folder == "eosinophil")
    out[eos] = _replace(out[eos], quirk="duplicate_across_classes")
    out.append(_replace(out[eos], folder="neutrophil", name=f"BNE_{spare_id}.jpg"))
    # a byte-identical pair in ALL Pro, in both versions: the next free file number
    pro = [it for it in out if it.dataset == "ALL" and it.folder.endswith("/Pro")]
    taken = {int(it.name.rsplit("-", 1)[1][:-4]) for it in pro}
    first = pro[0]
    number = int(first.name.rsplit("-", 1)[1][:-4])
    twin = next(n for n in [*range(number + 1, 1000), *range(1, number)] if n not in taken)
    for version in ALL_VERSIONS:
        i = out.index(_replace(first, folder=f"{version}/Pro"))
        out[i] = _replace(out[i], quirk="duplicate_pair")
        out.append(_replace(out[i], name=f"WBC-Malignant-Pro-{twin:03d}.jpg"))
    # black bands: two PBC images and one LMU image (not those already carrying a quirk)
    for dataset, count in (("PBC", 2), ("LMU", 1)):
        candidates = [i for i, it in enumerate(out) if it.dataset == dataset and not it.quirk]
        for i in rng.choice(candidates, size=count, replace=False):
            out[int(i)] = _replace(out[int(i)], quirk="black_band")
    # the macOS metadata file with an image name
    out.append(_Item("PBC", "neutrophil", JUNK_NAME, "", (9,), quirk="non_image"))
    return out


def _replace(item: _Item, **changes) -> _Item:
    return _Item(**{**item.__dict__, **changes})


def _pick(cell: str | Sequence[str], rng: np.random.Generator) -> str:
    return cell if isinstance(cell, str) else str(cell[int(rng.integers(len(cell)))])


def _numbers(rng: np.random.Generator, upper: int, count: int) -> list[int]:
    """``count`` sorted distinct file numbers in 1..upper."""
    return sorted(int(n) + 1 for n in rng.choice(upper, size=count, replace=False))


def _check_foreign_files(out: Path, plan: list[_Item]) -> None:
    """Refuse to write into dataset folders that hold files this generation would not write."""
    planned = {out / SOURCE_DIRS[it.dataset] / it.folder / it.name for it in plan}
    for dirname in SOURCE_DIRS.values():
        root = out / dirname
        if not root.is_dir():
            continue
        for path in root.rglob("*"):
            if not path.is_file() or path in planned:
                continue
            if path.name.startswith(".") and ".part" in path.name:  # temp file of an interrupted run
                path.unlink()
                continue
            raise WbcError(
                f"{out} already holds {path.relative_to(out)}, which this demo generation would not "
                "write (real data, or demo data of another size or seed). Choose an empty folder "
                "or delete the old demo data first."
            )


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write atomically, leaving a file that already holds exactly these bytes untouched."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    write_bytes_atomic(path, data)


# ----------------------------------------------------------------------------- rendering


def _render_item(item: _Item, seed: int, cache: dict) -> bytes:
    """The bytes of one file. ALL Original/Segmented share one drawing; duplicates share bytes."""
    if item.quirk == "non_image":
        return _junk_bytes(seed)
    cache_key = (item.key, item.folder.split("/")[0] if item.dataset == "ALL" else "")
    if cache_key in cache:
        return cache[cache_key]
    rng = np.random.default_rng([seed, *item.key])
    if item.dataset == "ALL":
        original, segmented = _draw_all_field(item.label, rng)
        for version, image in zip(ALL_VERSIONS, (original, segmented)):
            cache[(item.key, version)] = _encode_jpeg(image)
        return cache[cache_key]
    image = _draw_smear(item.label, item.dataset, rng)
    if item.quirk == "black_band":
        _black_band(image, rng)
    data = _encode_tiff_rgba(image) if item.dataset == "LMU" else _encode_jpeg(image)
    cache[cache_key] = data
    return data


def _encode_jpeg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 92])
    if not ok:
        raise WbcError("OpenCV could not encode a demo JPEG")
    return buf.tobytes()


def _encode_tiff_rgba(bgr: np.ndarray) -> bytes:
    """An uncompressed little-endian RGBA TIFF laid out like the LMU files (one strip, alpha 255)."""
    h, w = bgr.shape[:2]
    rgba = np.empty((h, w, 4), np.uint8)
    rgba[..., :3] = bgr[..., ::-1]
    rgba[..., 3] = 255
    n_tags = 11
    bits_at = 8 + 2 + n_tags * 12 + 4
    data_at = bits_at + 8
    tags = [  # (tag, type, count, value); type 3 = SHORT, 4 = LONG
        (256, 4, 1, w),
        (257, 4, 1, h),
        (258, 3, 4, bits_at),
        (259, 3, 1, 1),
        (262, 3, 1, 2),
        (273, 4, 1, data_at),
        (277, 3, 1, 4),
        (278, 4, 1, h),
        (279, 4, 1, rgba.nbytes),
        (284, 3, 1, 1),
        (338, 3, 1, 2),  # ExtraSamples = 2: unassociated alpha
    ]
    ifd = (
        struct.pack("<H", n_tags)
        + b"".join(
            struct.pack("<HHI", tag, typ, count)
            + (struct.pack("<HH", value, 0) if typ == 3 and count == 1 else struct.pack("<I", value))
            for tag, typ, count, value in tags
        )
        + struct.pack("<I", 0)
    )
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<4H", 8, 8, 8, 8) + rgba.tobytes()


def _junk_bytes(seed: int) -> bytes:
    """A macOS ``.DS_Store``-like blob (6,148 bytes, as in the real file): not an image."""
    body = bytearray(6148)
    body[:8] = b"\x00\x00\x00\x01Bud1"
    rng = np.random.default_rng([seed, 4242])
    for pos in rng.choice(np.arange(16, 6148), size=40, replace=False):
        body[int(pos)] = int(rng.integers(1, 256))
    return bytes(body)


def _black_band(image: np.ndarray, rng: np.random.Generator) -> None:
    """Blacken a 16-40 px strip on one edge, as a lossy format conversion leaves (in place).

    Widths are multiples of 8 on the top/left edges so JPEG blocks keep the band pure black.
    """
    width = int(rng.choice([16, 24, 32, 40]))
    edge = int(rng.integers(2))
    if edge == 0:
        image[:width] = 0
    else:
        image[:, :width] = 0


def _rgb(colour, tint=(1.0, 1.0, 1.0), jitter=None) -> tuple[float, float, float]:
    """An RGB table colour as a BGR tuple for OpenCV, tinted and jittered."""
    c = np.asarray(colour, float) * np.asarray(tint)
    if jitter is not None:
        c = c + jitter
    c = np.clip(c, 0, 255)
    return float(c[2]), float(c[1]), float(c[0])


def _draw_smear(cell_type: str, dataset: str, rng: np.random.Generator) -> np.ndarray:
    """A PBC- or LMU-like image: background, red cells around, one centred cell (BGR uint8)."""
    style = STYLES[dataset]
    w, h = style["size"]
    rbc_r = rng.uniform(*style["rbc_radius"])
    spec = CELL_TYPES[cell_type]
    cell_r = rbc_r * rng.uniform(*spec["size"])
    centre = np.array([w / 2, h / 2]) + rng.normal(0, 0.035 * w, 2)
    image = _background(style, (h, w), rng)
    keep_out = [(centre, cell_r + 0.6 * rbc_r)] if cell_type != "platelet" else [(centre, 1.2 * rbc_r)]
    _draw_red_cells(image, style, rbc_r, rng.integers(*style["rbc_count"]), keep_out, rng)
    stain = rng.normal(0, 8, 3)  # per-image stain shift shared by every part of the cell
    if cell_type == "platelet":
        for _ in range(int(rng.integers(spec["bodies"][0], spec["bodies"][1] + 1))):
            at = centre + rng.normal(0, 0.5 * rbc_r, 2)
            _draw_cell(image, at, rbc_r * rng.uniform(*spec["size"]), spec, style, rbc_r, stain, rng)
    else:
        _draw_cell(image, centre, cell_r, spec, style, rbc_r, stain, rng)
    return _finish(image, rng)


def _draw_all_field(cell_type: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An ALL-like field (red cells around one dominant white cell near the centre, sometimes
    one or two more of the same type further out) and its Segmented version (white cells only,
    pink, on black), as BGR uint8 images. The dominant cell carries the class signal, so small
    CNNs at 64-96 px can learn it, as most real ALL images centre one or a few lymphoblasts."""
    style = STYLES["ALL"]
    w, h = style["size"]
    rbc_r = rng.uniform(*style["rbc_radius"])
    spec = CELL_TYPES[cell_type]
    image = _background(style, (h, w), rng)
    main = np.array([w / 2, h / 2]) + rng.uniform(-0.1, 0.1, 2) * (w, h)
    cells = [(main, rbc_r * rng.uniform(*spec["size"]))]
    for _ in range(int(rng.choice(3, p=[0.7, 0.25, 0.05]))):
        r = rbc_r * rng.uniform(*spec["size"]) * rng.uniform(0.85, 1.0)
        for _attempt in range(20):
            at = rng.uniform([r * 0.3, r * 0.3], [w - r * 0.3, h - r * 0.3])
            if all(np.hypot(*(at - c)) > r + cr + 0.3 * rbc_r for c, cr in cells):
                cells.append((at, r))
                break
    _draw_red_cells(
        image, style, rbc_r, rng.integers(*style["rbc_count"]), [(c, r + 0.3 * rbc_r) for c, r in cells], rng
    )
    mask = np.zeros((h, w), np.uint8)
    stain = rng.normal(0, 8, 3)
    for at, r in cells:
        _draw_cell(image, at, r, spec, style, rbc_r, stain, rng)
        cv2.circle(mask, _pt(at), int(r * 0.97), 255, -1, cv2.LINE_AA)
    original = _finish(image, rng)
    return original, _segment(original, mask, rng)


def _segment(original: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The Segmented version: the white cells recoloured pink-magenta on black, plus speckle."""
    grey = cv2.cvtColor(original, cv2.COLOR_BGR2GRAY).astype(np.float32) / 255.0
    dark = 1.0 - grey
    pink = np.stack([125 + 100 * dark, 30 + 130 * grey, 165 + 90 * grey], axis=-1)  # BGR
    pink *= rng.uniform(0.85, 1.05)
    speckle: np.ndarray = (_noise(mask.shape, rng) > 3.2).astype(np.uint8) * 255
    speckle = cv2.dilate(speckle, np.ones((2, 2), np.uint8))
    alpha = (cv2.GaussianBlur(np.maximum(mask, speckle), (3, 3), 0).astype(np.float32) / 255.0)[..., None]
    return np.clip(pink * alpha, 0, 255).astype(np.uint8)


def _background(style: dict, shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """Background colour with a slow illumination gradient, BGR uint8."""
    h, w = shape
    low = rng.normal(0, 1, (4, 4, 1))
    base = np.array(_rgb(style["background"], jitter=rng.normal(0, 4, 3)))
    small = np.clip(base * (1 + 0.025 * low), 0, 255).astype(np.uint8)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _draw_red_cells(image, style, rbc_r, count, keep_out, rng) -> None:
    """Pale discs with a lighter centre around the white cell(s), not covering them."""
    h, w = image.shape[:2]
    rim = _rgb(style["rbc"], jitter=rng.normal(0, 5, 3))
    pallor = _rgb(style["pallor"], jitter=rng.normal(0, 4, 3))
    tries = int(count) * 15
    radii = rbc_r * rng.uniform(0.9, 1.1, tries)
    spots = rng.uniform(-0.5 * rbc_r, [w + 0.5 * rbc_r, h + 0.5 * rbc_r], (tries, 2))
    shapes = rng.uniform([0.88, 0.0], [1.0, 180.0], (tries, 2))  # axis ratio, angle
    free = np.ones(tries, bool)
    for c, cr in keep_out:  # keep the white cells visible
        free &= np.hypot(*(spots - c).T) >= cr + 0.7 * radii
    placed = np.zeros(tries, bool)
    for i in np.flatnonzero(free):
        gaps = np.hypot(*(spots[placed] - spots[i]).T)
        if (gaps < (1 - style["rbc_overlap"]) * (radii[placed] + radii[i])).any():
            continue
        placed[i] = True
        axes = (int(radii[i]), int(radii[i] * shapes[i, 0]))
        inner = (int(axes[0] * 0.6), int(axes[1] * 0.6))
        cv2.ellipse(image, _pt(spots[i]), axes, shapes[i, 1], 0, 360, rim, -1, cv2.LINE_AA)
        cv2.ellipse(image, _pt(spots[i]), inner, shapes[i, 1], 0, 360, pallor, -1, cv2.LINE_AA)
        if placed.sum() >= count:
            break


def _draw_cell(image, centre, cell_r, spec, style, rbc_r, stain, rng) -> None:
    """Draw one cell (cytoplasm, granules, nucleus, chromatin, nucleoli) into ``image`` in place."""
    h, w = image.shape[:2]
    pad = int(cell_r * 1.3) + 4
    x0, y0 = max(int(centre[0]) - pad, 0), max(int(centre[1]) - pad, 0)
    x1, y1 = min(int(centre[0]) + pad, w), min(int(centre[1]) + pad, h)
    if x1 - x0 < 4 or y1 - y0 < 4:
        return
    crop = image[y0:y1, x0:x1]
    c = np.asarray(centre, float) - (x0, y0)
    scale = rbc_r / 35.0  # granule sizes are given at PBC scale
    tint = style["tint"]
    angle = rng.uniform(0, 2 * np.pi)
    cell = np.zeros(crop.shape[:2], np.uint8)
    outline = c + _outline(cell_r, spec.get("irregularity", 0.025), rng)
    cv2.fillPoly(cell, [np.round(outline).astype(np.int32)], 255, cv2.LINE_AA)
    nucleus = np.zeros_like(cell)
    if spec["nucleus"] != "none":
        offset = spec["nucleus_offset"] * cell_r * np.array([np.cos(angle), np.sin(angle)])
        _draw_nucleus(nucleus, c + offset, spec["nucleus_size"] * cell_r, spec, angle, rng)
        nucleus = cv2.bitwise_and(nucleus, cell) if spec["cytoplasm_rgb"] is not None else nucleus

    if spec["cytoplasm_rgb"] is not None:
        cyto = _rgb(spec["cytoplasm_rgb"], tint, stain + rng.normal(0, 5, 3))
        _paint(crop, cell, cyto, _texture(crop.shape[:2], 0.05, 2.0, rng))
    granules = spec.get("granules")
    if granules and not granules[3]:
        _draw_granules(crop, cv2.subtract(cell, nucleus), granules, tint, stain, scale, rng)
    for _ in range(int(rng.integers(*spec.get("vacuoles", (0, 1))))):
        at = c + rng.uniform(-0.6, 0.6, 2) * cell_r
        if cell[min(int(at[1]), cell.shape[0] - 1), min(int(at[0]), cell.shape[1] - 1)]:
            cv2.circle(
                crop,
                _pt(at),
                max(2, int(cell_r * rng.uniform(0.05, 0.1))),
                _rgb((225, 215, 235), tint),
                -1,
                cv2.LINE_AA,
            )
    if spec["nucleus"] != "none":
        strength, grain = spec["chromatin"]
        colour = _rgb(spec["nucleus_rgb"], tint, stain + rng.normal(0, 6, 3))
        _paint(crop, nucleus, colour, _texture(crop.shape[:2], strength, grain * scale, rng))
        _draw_nucleoli(crop, nucleus, spec, c, cell_r, tint, rng)
    if granules and granules[3]:
        _draw_granules(crop, cell, granules, tint, stain, scale, rng)


def _outline(radius: float, irregularity: float, rng: np.random.Generator, n: int = 64) -> np.ndarray:
    """Points of a slightly irregular closed outline around the origin."""
    theta = np.linspace(0, 2 * np.pi, n, endpoint=False)
    r = np.ones(n)
    for k in range(2, 6):
        r += irregularity * rng.normal() / k * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.stack([radius * r * np.cos(theta), radius * r * np.sin(theta)], axis=1)


def _draw_nucleus(mask, at, radius, spec, angle, rng) -> None:
    """The nucleus shape into ``mask`` (255 inside): round, kidney, band, folded, lobed, smudge."""
    kind = spec["nucleus"]
    deg = float(np.degrees(angle))
    direction = np.array([np.cos(angle), np.sin(angle)])
    if kind in ("round", "kidney", "folded"):
        axes = (int(radius), int(radius * rng.uniform(0.82, 0.98)))
        cv2.ellipse(mask, _pt(at), axes, deg, 0, 360, 255, -1, cv2.LINE_AA)
        if kind != "round":  # an indentation on the side facing the cell centre
            bite = 0.55 if kind == "kidney" else 0.45
            cv2.circle(mask, _pt(at - direction * radius * 1.05), int(radius * bite), 0, -1, cv2.LINE_AA)
        if kind == "folded":  # monocyte: a lobulated, irregular outline
            for _ in range(3):
                fold = at + rng.normal(0, 0.5, 2) * radius
                cv2.circle(mask, _pt(fold), int(radius * rng.uniform(0.35, 0.5)), 255, -1, cv2.LINE_AA)
    elif kind == "band":  # horseshoe: a thick arc with rounded ends
        thick = max(3, int(radius * rng.uniform(0.34, 0.42)))
        axes = (int(radius * 0.78), int(radius * rng.uniform(0.55, 0.75)))
        start = rng.uniform(25, 60)
        end = 360 - rng.uniform(25, 60)
        cv2.ellipse(mask, _pt(at), axes, deg, start, end, 255, thick, cv2.LINE_AA)
        for a in (start, end):
            t = np.radians(a)
            p = np.array([axes[0] * np.cos(t), axes[1] * np.sin(t)])
            p = at + _rotate(p, angle)
            cv2.circle(mask, _pt(p), thick // 2, 255, -1, cv2.LINE_AA)
    elif kind == "lobed":  # 2-5 lobes along an arc, joined by thin strands
        lo, hi = spec["lobes"]
        k = int(rng.integers(lo, hi + 1))
        lobe_r = radius * (0.48 if k == 2 else 0.4 if k == 3 else 0.34)
        span = np.radians(rng.uniform(150, 230) if k > 2 else rng.uniform(110, 160))
        angles = angle + np.linspace(-span / 2, span / 2, k) + rng.normal(0, 0.12, k)
        centres = [at + radius * 0.55 * np.array([np.cos(a), np.sin(a)]) for a in angles]
        for p, q in zip(centres[:-1], centres[1:]):
            cv2.line(mask, _pt(p), _pt(q), 255, max(2, int(radius * 0.08)), cv2.LINE_AA)
        for a, p in zip(angles, centres):
            axes = (int(lobe_r * rng.uniform(0.95, 1.1)), int(lobe_r * rng.uniform(0.7, 0.9)))
            cv2.ellipse(mask, _pt(p), axes, float(np.degrees(a)) + 90, 0, 360, 255, -1, cv2.LINE_AA)
    elif kind == "smudge":  # smudge cell: a smeared, irregular, pale nuclear mass with streaks
        outline = at + _outline(radius * 0.8, 0.35, rng)
        cv2.fillPoly(mask, [np.round(outline).astype(np.int32)], 255, cv2.LINE_AA)
        for _ in range(int(rng.integers(3, 7))):
            end = at + rng.normal(0, 1.0, 2) * radius
            cv2.line(mask, _pt(at), _pt(end), 255, max(2, int(radius * 0.12)), cv2.LINE_AA)


def _draw_nucleoli(crop, nucleus, spec, c, cell_r, tint, rng) -> None:
    """Pale, slightly bluish round spots inside the nucleus (blasts)."""
    lo, hi = spec.get("nucleoli", (0, 0))
    count = int(rng.integers(lo, hi + 1))
    ys, xs = np.nonzero(nucleus > 200)
    if count == 0 or len(xs) == 0:
        return
    colour = _rgb((185, 150, 210), tint)
    for idx in rng.choice(len(xs), size=count, replace=False):
        r = max(2, int(cell_r * rng.uniform(0.07, 0.11)))
        layer = crop.copy()
        cv2.circle(layer, (int(xs[idx]), int(ys[idx])), r, colour, -1, cv2.LINE_AA)
        cv2.addWeighted(layer, 0.55, crop, 0.45, 0, dst=crop)


def _draw_granules(crop, region, granules, tint, stain, scale, rng) -> None:
    """Small dots over ``region`` (mask) covering about ``coverage`` of it."""
    coverage, colour, radius, _over = granules
    ys, xs = np.nonzero(region > 128)
    if len(xs) == 0:
        return
    r = max(1.0, radius * scale)
    count = int(coverage * len(xs) / (np.pi * r * r))
    layer = np.zeros_like(region)
    for idx in rng.integers(0, len(xs), size=count):
        cv2.circle(layer, (int(xs[idx]), int(ys[idx])), int(round(r * rng.uniform(0.7, 1.2))), 255, -1, cv2.LINE_AA)
    layer = cv2.bitwise_and(layer, region)
    _paint(crop, layer, _rgb(colour, tint, stain + rng.normal(0, 6, 3)), None)


def _paint(crop: np.ndarray, mask: np.ndarray, colour, texture: np.ndarray | None) -> None:
    """Blend ``colour`` (optionally modulated by a texture) into ``crop`` where ``mask`` is set."""
    x, y, w, h = cv2.boundingRect(mask)  # work on the mask's bounding box only
    if w == 0 or h == 0:
        return
    box = (slice(y, y + h), slice(x, x + w))
    alpha = mask[box].astype(np.float32)[..., None] * np.float32(1 / 255)
    fill = np.asarray(colour, np.float32)[None, None, :]
    if texture is not None:
        fill = fill * texture[box][..., None]
    under = crop[box].astype(np.float32)
    crop[box] = np.clip(under + (fill - under) * alpha, 0, 255).astype(np.uint8)


def _texture(shape, strength: float, grain: float, rng: np.random.Generator) -> np.ndarray:
    """A multiplicative texture around 1: blurred noise (``grain`` px) of ``strength``."""
    noise: np.ndarray = cv2.GaussianBlur(_noise(shape, rng), (0, 0), max(grain, 0.5))
    noise /= noise.std() + 1e-6
    return 1.0 + strength * noise


def _finish(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Optical blur, per-channel stain/brightness jitter and sensor noise."""
    out = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.6, 1.4)).astype(np.float32)
    out *= rng.normal(1.0, 0.02, 3).astype(np.float32)[None, None, :]
    out += _noise(out.shape, rng) * np.float32(rng.uniform(1.5, 4.0))
    np.clip(out, 0, 255, out=out)
    return out.astype(np.uint8)


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """Gaussian noise drawn once (fixed seed); images take windows of it (much faster than
    drawing fresh noise for every pixel of every image, and still deterministic)."""
    return np.random.default_rng(20240601).standard_normal((_BANK, _BANK, 3), dtype=np.float32)


def _noise(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """A read-only window of standard normal noise of ``shape`` (2-D or 3-D with 3 channels)."""
    h, w = shape[:2]
    y, x = (int(v) for v in rng.integers(0, [_BANK - h + 1, _BANK - w + 1]))
    window = _noise_bank()[y : y + h, x : x + w]
    return window if len(shape) == 3 else window[..., int(rng.integers(3))]


def _rotate(p: np.ndarray, angle: float) -> np.ndarray:
    ca, sa = np.cos(angle), np.sin(angle)
    return np.array([ca * p[0] - sa * p[1], sa * p[0] + ca * p[1]])


def _pt(p) -> tuple[int, int]:
    return int(round(float(p[0]))), int(round(float(p[1])))
