"""Dataset downloads: a registry, resumable checksummed fetches, safe extraction, verification.

Four datasets land in one data folder under their standard names (see ``data/README.md``):

- ``pbc``: Mendeley Data archive over HTTPS, extracted to ``PBC_dataset_normal_DIB/``;
- ``all``: Kaggle ``mehradaria/leukemia`` through kagglehub, placed in ``ALL_Kaggle/``;
- ``bloodmnist``: Zenodo ``.npz`` files, checked against the MD5s MedMNIST publishes;
- ``lmu``: TCIA offers no plain HTTPS file, so ``download lmu`` prints the documented route and
  verifies a folder the user downloaded (``verify_lmu``).

Where the data's owner publishes no checksum (Mendeley, Kaggle) the *content* is verified instead
(folder names, per-class file counts from the dataset papers, images decode) and the SHA-256 of
the first verified archive is recorded in ``DATA_DIR/.wbc-downloads.json`` for later runs.
"""
from __future__ import annotations

import datetime
import inspect
import json
import os
import random
import shutil
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Callable

from wbc.config import ALL_DIRNAME, LMU_DIRNAME, PBC_DIRNAME
from wbc.errors import DownloadError, LayoutError, WbcError
from wbc.fileio import display_path, file_digest, temporary_sibling, write_text_atomic

# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------

#: Full PBC release per folder (Acevedo et al. 2020, Data in Brief 30:105474, Table 1); 17,092.
PBC_COUNTS: dict[str, int] = {
    "basophil": 1218, "eosinophil": 3117, "erythroblast": 1551, "ig": 2895,
    "lymphocyte": 1214, "monocyte": 1420, "neutrophil": 3329, "platelet": 2348,
}
#: Full LMU release per class code (Matek et al. 2019, TCIA collection page); 18,365.
LMU_COUNTS: dict[str, int] = {
    "BAS": 79, "EBO": 78, "EOS": 424, "KSC": 15, "LYA": 11, "LYT": 3937, "MMZ": 15, "MOB": 26,
    "MON": 1789, "MYB": 42, "MYO": 3268, "NGB": 109, "NGS": 8484, "PMB": 18, "PMO": 70,
}
#: Kaggle ALL per class (3,256 images of 89 patients; Ghaderzadeh et al. 2022, Int J Intell
#: Syst 37:5113, doi 10.1002/int.22753, as quoted by several independent public descriptions
#: of the Kaggle release, not checked against the paper itself); the same file names exist
#: once in Original/ and once in Segmented/.
ALL_CLASS_COUNTS: dict[str, int] = {"Benign": 504, "Early": 985, "Pre": 963, "Pro": 804}
ALL_VERSIONS: tuple[str, ...] = ("Original", "Segmented")
ALL_COUNTS: dict[str, int] = {f"{v}/{c}": n for v in ALL_VERSIONS
                              for c, n in ALL_CLASS_COUNTS.items()}
#: BloodMNIST split sizes (medmnist INFO["bloodmnist"]["n_samples"]).
BLOODMNIST_SPLITS: dict[str, int] = {"train": 11959, "val": 1712, "test": 3421}

# BloodMNIST URLs and MD5s: medmnist 3.0.2 (PyPI wheel), medmnist/info.py, INFO["bloodmnist"]
# keys url/MD5, url_64/MD5_64, url_128/MD5_128, url_224/MD5_224 (Zenodo record 10519652,
# MedMNIST+). The 28-px MD5 equals the one of the earlier record 6496656 (medmnist 2.1.0).
_ZENODO = "https://zenodo.org/records/10519652/files"
BLOODMNIST_URLS: dict[int, str] = {
    28: f"{_ZENODO}/bloodmnist.npz?download=1",
    64: f"{_ZENODO}/bloodmnist_64.npz?download=1",
    128: f"{_ZENODO}/bloodmnist_128.npz?download=1",
    224: f"{_ZENODO}/bloodmnist_224.npz?download=1",
}
BLOODMNIST_MD5: dict[int, str] = {
    28: "7053d0359d879ad8a5505303e11de1dc",
    64: "2b94928a2ae4916078ca51e05b6b800b",
    128: "adace1e0ed228fccda1f39692059dd4c",
    224: "b718ff6835fcbdb22ba9eacccd7b2601",
}

# PBC archive: the file link of PBC_dataset_normal_DIB.zip on the Mendeley dataset page, as used
# by public scripts that fetch this dataset; not re-checked against the live page when this
# entry was written: pass --url when Mendeley moves it. Mendeley publishes no checksum: the
# content is verified and the first verified archive's SHA-256 recorded.
PBC_ARCHIVE_URL = ("https://data.mendeley.com/public-files/datasets/snkd93bnjr/files/"
                   "2fc38728-2ae7-4a62-a857-032af82334c3/file_downloaded")


@dataclass(frozen=True)
class DatasetInfo:
    """One registry entry: what a dataset is, where it comes from and what a full copy holds."""

    key: str
    title: str
    citation: str
    page: str
    doi: str
    licence: str
    target: str  # folder (or file pattern) under the data folder
    urls: dict = field(default_factory=dict)  # variant -> URL
    md5: dict = field(default_factory=dict)  # variant -> MD5 published by the data's owner
    counts: dict = field(default_factory=dict)  # class folder (or split) -> files in full release
    suffixes: tuple = (".jpg",)


REGISTRY: dict[str, DatasetInfo] = {
    "pbc": DatasetInfo(
        key="pbc", title="PBC: normal peripheral blood cells (8 classes, JPEG 360x363)",
        citation="Acevedo A, Merino A, Alferez S, Molina A, Boldu L, Rodellar J. A dataset of "
                 "microscopic peripheral blood cell images for development of automatic "
                 "recognition systems. Data in Brief 30 (2020) 105474; Mendeley Data V1.",
        page="https://data.mendeley.com/datasets/snkd93bnjr/1", doi="10.17632/snkd93bnjr.1",
        licence="CC BY 4.0", target=PBC_DIRNAME, urls={"archive": PBC_ARCHIVE_URL},
        counts=PBC_COUNTS, suffixes=(".jpg",)),
    "lmu": DatasetInfo(
        key="lmu", title="AML-Cytomorphology_LMU: leukocytes of AML patients and controls "
                         "(15 class codes, RGBA TIFF 400x400, about 11 GB)",
        citation="Matek C, Schwarz S, Marr C, Spiekermann K. A Single-cell Morphological Dataset "
                 "of Leukocytes from AML Patients and Non-malignant Controls. The Cancer Imaging "
                 "Archive, 2019.",
        page="https://www.cancerimagingarchive.net/collection/aml-cytomorphology_lmu/",
        doi="10.7937/tcia.2019.36f5o9ld", licence="CC BY 3.0", target=LMU_DIRNAME,
        counts=LMU_COUNTS, suffixes=(".tiff", ".tif")),
    "all": DatasetInfo(
        key="all", title="ALL: acute lymphoblastic leukaemia, Benign / Early / Pre / Pro "
                         "(JPEG 224x224, Original and Segmented)",
        citation="Aria M, Ghaderzadeh M, Bashash D, Abolghasemi H, Asadi F, Hosseini A. Acute "
                 "Lymphoblastic Leukemia (ALL) image dataset. Kaggle, 2021.",
        page="https://www.kaggle.com/datasets/mehradaria/leukemia",
        doi="10.34740/KAGGLE/DSV/2175623", licence="see the dataset page", target=ALL_DIRNAME,
        urls={"kaggle": "mehradaria/leukemia"}, counts=ALL_COUNTS, suffixes=(".jpg", ".jpeg")),
    "bloodmnist": DatasetInfo(
        key="bloodmnist", title="BloodMNIST: PBC re-released by MedMNIST (8 classes, fixed split)",
        citation="Yang J, Shi R, Wei D, et al. MedMNIST v2: a large-scale lightweight benchmark "
                 "for 2D and 3D biomedical image classification. Scientific Data 10, 41 (2023).",
        page="https://medmnist.com/", doi="10.5281/zenodo.10519652", licence="CC BY 4.0",
        target="bloodmnist[_SIZE].npz", urls=BLOODMNIST_URLS, md5=BLOODMNIST_MD5,
        counts=BLOODMNIST_SPLITS, suffixes=(".npz",)),
}

#: Archive limits, checked from the zip directory BEFORE anything is extracted (settable per
#: call and with --max-archive-gb / --max-archive-entries): the PBC archive unpacks to about
#: 270 MB in 17,000 files, so these leave ample room and stop a zip bomb or a wrong file.
MAX_ARCHIVE_BYTES = 20 * 1024 ** 3
MAX_ARCHIVE_ENTRIES = 200_000
#: A file larger than this is not decoded as an image by the verification (a cell image is
#: kilobytes; a mislabelled disk image is not read into memory whole).
MAX_IMAGE_FILE_BYTES = 256 * 1024 ** 2

RECORD_NAME = ".wbc-downloads.json"  # SHA-256 of the first verified archive, per dataset
DOWNLOADS_DIRNAME = ".downloads"  # archives kept beside the extracted data
DEFAULT_SAMPLE = 200  # images decoded per dataset unless verify_all


class ChecksumError(DownloadError):
    """A downloaded (or present) file does not match its expected digest."""


# --------------------------------------------------------------------------------------------
# Fetching
# --------------------------------------------------------------------------------------------

def _check_digests(path: Path, url: str, expected: dict[str, str], *, delete: bool) -> None:
    """Raise ChecksumError when ``path`` does not match every expected ``{algorithm: digest}``."""
    for algorithm, want in expected.items():
        got = file_digest(path, algorithm)
        if got != want.lower():
            if delete:
                path.unlink(missing_ok=True)
                what = ("The download was deleted. Run the command again to download it afresh; "
                        "if it fails again, the file on the server is not the expected one: check "
                        "the dataset page or give the right address with --url.")
            else:
                what = (f"The file was left untouched: delete {path} and run the command again "
                        "to download it afresh.")
            raise ChecksumError(f"checksum mismatch for {url} ({path.name}): expected {algorithm} "
                                f"{want.lower()}, got {got}. {what}")


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total length)`` of a Content-Range header (``bytes 100-199/200``,
    ``bytes */200``); None for what it does not say."""
    import re

    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total and total != "*" else None)


def _digests_match(path: Path, expected: dict[str, str]) -> bool:
    return bool(expected) and all(file_digest(path, a) == w.lower() for a, w in expected.items())


def fetch_url(url: str, dest: str | os.PathLike, *, expected_md5: str | None = None,
              expected_sha256: str | None = None, chunk: int = 1 << 20, progress: bool = True,
              timeout: float = 60) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with an HTTP Range request.

    The bytes go to ``dest.part``; only a complete file whose digests match is renamed to
    ``dest``. An interrupted download keeps the part file so that the next call resumes. The
    download starts again from byte 0, into a fresh part file, when the server ignores Range
    (200), answers a resume with a Content-Range that does not start where the part file ends,
    or says the part file is longer than the file itself (416): a part file is only ever
    extended by the bytes that follow it. An existing ``dest`` is checked and kept. Raises
    ``DownloadError`` (``ChecksumError`` on a digest mismatch) saying what to do.
    """
    import requests
    from tqdm.auto import tqdm

    dest = Path(dest)
    expected = {k: v for k, v in (("md5", expected_md5), ("sha256", expected_sha256)) if v}
    if dest.exists():
        _check_digests(dest, url, expected, delete=False)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    total: int | None = None

    def restart() -> None:
        nonlocal offset
        part.unlink(missing_ok=True)  # a fresh file: none of the old bytes are reused
        offset = 0

    try:
        for _attempt in range(3):
            headers = {"Accept-Encoding": "identity"}  # byte offsets must refer to the file itself
            if offset:
                headers["Range"] = f"bytes={offset}-"
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                if resp.status_code == 416 and offset:
                    _, remote = _content_range(resp.headers.get("Content-Range"))
                    if remote == offset or (remote is None and _digests_match(part, expected)):
                        total = offset  # the part file already holds every byte
                        break
                    restart()  # longer than the remote file (or unknown): discard, fetch again
                    continue
                if resp.status_code >= 400:
                    raise DownloadError(f"download of {url} failed: HTTP {resp.status_code} "
                                        f"{resp.reason}. Check the address (or pass --url) and "
                                        "your network, then run the command again.")
                length = resp.headers.get("Content-Length")
                length = int(length) if length and length.isdigit() else None
                resumed = False
                if resp.status_code == 206:
                    first, remote = _content_range(resp.headers.get("Content-Range"))
                    if first is None or first != offset or (remote is not None and remote < offset):
                        restart()  # not the bytes that follow the part file: start over cleanly
                        continue
                    resumed = offset > 0
                    if not resumed:
                        restart()
                    total = remote if remote is not None else (offset + length if length is not None else None)
                else:  # 200: the whole file, whatever was asked
                    restart()
                    total = length
                with open(part, "ab" if resumed else "xb") as fh, tqdm(
                        total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024,
                        desc=dest.name, disable=not progress, leave=False) as bar:
                    for block in resp.iter_content(chunk_size=chunk):
                        fh.write(block)
                        bar.update(len(block))
                break
        else:
            raise DownloadError(f"download of {url} failed: the server keeps answering with bytes "
                                "that do not fit the partial file; it was deleted. Run the command "
                                "again later, or pass another --url.")
    except requests.RequestException as exc:
        have = part.stat().st_size if part.exists() else 0
        raise DownloadError(f"download of {url} was interrupted after {have:,} bytes ({exc}). "
                            f"The partial file {part} is kept: run the same command again to "
                            "resume.") from exc
    have = part.stat().st_size if part.exists() else 0
    if total is not None and have < total:
        raise DownloadError(f"download of {url} ended early: {have:,} of {total:,} bytes. The "
                            f"partial file {part} is kept: run the same command again to resume.")
    if total is not None and have > total:
        part.unlink(missing_ok=True)
        raise DownloadError(f"download of {url} gave {have:,} bytes where the server announced "
                            f"{total:,}; the file was deleted. Run the command again.")
    _check_digests(part, url, expected, delete=True)
    if not expected and dest.suffix.lower() == ".zip" and not zipfile.is_zipfile(part):
        raise DownloadError(f"download of {url} is not a complete zip archive ({have:,} bytes, no "
                            f"checksum to compare). The partial file {part} is kept: run the same "
                            "command again to resume, or delete it to start over.")
    os.replace(part, dest)
    return dest


# --------------------------------------------------------------------------------------------
# Verification
# --------------------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    """What a dataset folder (or file) holds compared with the full published release."""

    dataset: str
    root: Path
    expected: dict[str, int]
    counts: dict[str, int] = field(default_factory=dict)  # class folder -> image files found
    unexpected: list[str] = field(default_factory=list)  # folders the release does not have
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason), not counted
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    decoded: int = 0  # images actually decoded
    checked_all: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def missing(self) -> list[str]:
        """Expected class folders that were not found."""
        return [name for name in self.expected if name not in self.counts]

    def differences(self) -> dict[str, tuple[int, int]]:
        """``{class: (found, published)}`` for every class whose count differs."""
        return {name: (self.counts.get(name, 0), n) for name, n in self.expected.items()
                if self.counts.get(name, 0) != n}

    @property
    def usable(self) -> bool:
        """Every class folder present and every checked file readable."""
        return not self.missing and not self.unreadable

    @property
    def complete(self) -> bool:
        """Usable and every count equals the published release."""
        return self.usable and not self.differences()

    def summary(self) -> str:
        """A few lines for people: counts, differences, unreadable and skipped files."""
        found, published = sum(self.counts.values()), sum(self.expected.values())
        lines = [f"{self.dataset} at {self.root}: {len(self.counts)}/{len(self.expected)} class "
                 f"folders, {found:,} files (full release: {published:,})"]
        if self.missing:
            lines.append(f"  missing class folders: {', '.join(self.missing)}")
        diffs = {k: v for k, v in self.differences().items() if k in self.counts}
        if diffs:
            lines.append("  counts that differ from the full release (found / published):")
            lines += [f"    {name:<20} {a:>6,} / {b:,}" for name, (a, b) in diffs.items()]
        elif not self.missing:
            lines.append("  every count equals the full release")
        if self.unexpected:
            lines.append(f"  folders not in the release (ignored): {', '.join(self.unexpected)}")
        how = "all of them" if self.checked_all else "a sample; --verify-all decodes all"
        lines.append(f"  decoded {self.decoded:,} files ({how}): "
                     f"{len(self.unreadable)} unreadable")
        lines += [f"    unreadable: {display_path(p)} ({why})" for p, why in self.unreadable[:20]]
        lines += [f"    skipped: {display_path(p)} ({why})" for p, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"    ... and {len(self.skipped) - 20} more skipped files")
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _decode(path: Path):
    """Decode an image file with OpenCV; returns ``(array, "")`` or ``(None, reason)``.

    The file's size and its header's pixel count are checked first (``MAX_IMAGE_FILE_BYTES``,
    ``wbc.preprocess.MAX_PIXELS``), so a huge file or a decompression bomb is reported without
    being read whole or decoded."""
    import cv2
    import numpy as np

    from wbc.preprocess import MAX_PIXELS

    try:
        size = path.stat().st_size
        if size > MAX_IMAGE_FILE_BYTES:
            return None, (f"too large for an image file ({size:,} bytes; the limit is "
                          f"{MAX_IMAGE_FILE_BYTES:,}); not read")
        dims = _header_dims(path)
        if dims and dims[0] * dims[1] > MAX_PIXELS:
            return None, (f"too large: {dims[0]}x{dims[1]} px is above the limit of "
                          f"{MAX_PIXELS / 1e6:g} megapixels; not decoded")
        data = np.fromfile(path, dtype=np.uint8)
    except OSError as exc:
        return None, f"cannot be read: {exc}"
    if data.size == 0:
        return None, "empty file (0 bytes)"
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # libtiff tag warnings
    try:
        image = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    finally:
        cv2.utils.logging.setLogLevel(level)
    if image is None:
        return None, "not a decodable image"
    return image, ""


def _header_dims(path: Path) -> tuple[int, int] | None:
    """``(width, height)`` from the image header (only the header is read), else None."""
    from wbc.preprocess import header_size

    return header_size(path)


def verify_folder(root: str | os.PathLike, expected: dict[str, int], dataset: str, *,
                  suffixes: tuple[str, ...] = (".jpg",), verify_all: bool = False,
                  sample: int = DEFAULT_SAMPLE, seed: int = 0,
                  channels: int | None = None) -> VerifyReport:
    """Count the files of each expected class folder under ``root`` and decode some (or all).

    Hidden files (such as PBC's macOS ``.DS_169665.jpg``) and files without an image suffix
    are skipped and listed, never counted. With ``channels`` set, decoded images with another
    channel count are noted. Nothing under ``root`` is modified.
    """
    root = Path(root)
    report = VerifyReport(dataset, root, dict(expected), checked_all=verify_all)
    images: list[Path] = []
    for name in expected:
        folder = root / name
        if not folder.is_dir():
            continue
        count = 0
        for path in sorted(folder.iterdir()):
            if path.is_dir():
                report.skipped.append((str(path), "a folder inside a class folder"))
            elif path.name.startswith("."):
                report.skipped.append((str(path), "hidden file (macOS metadata?), not an image"))
            elif path.suffix.lower() not in suffixes:
                report.skipped.append((str(path), f"not a {'/'.join(suffixes)} file"))
            else:
                count += 1
                images.append(path)
        report.counts[name] = count
    ancestors = {parent for name in expected for parent in PurePosixPath(name).parents}
    for ancestor in sorted(ancestors):
        folder = root / ancestor
        if not folder.is_dir():
            continue
        for child in sorted(p for p in folder.iterdir() if p.is_dir()):
            rel = ancestor / child.name
            known = str(rel) in expected or rel in ancestors
            if not known and not child.name.startswith(".") and child.name != "__MACOSX":
                report.unexpected.append(str(rel))
    chosen = images if verify_all or len(images) <= sample else \
        random.Random(seed).sample(images, sample)
    report.checked_all = len(chosen) == len(images)
    wrong_channels = []
    for path in chosen:
        image, reason = _decode(path)
        report.decoded += 1
        if image is None:
            report.unreadable.append((str(path), reason))
        elif channels is not None and (image.shape[2] if image.ndim == 3 else 1) != channels:
            wrong_channels.append(path)
    if channels is not None and chosen:
        if wrong_channels:
            report.notes.append(f"{len(wrong_channels)} of {len(chosen)} decoded images do not "
                                f"have {channels} channels, e.g. {wrong_channels[0]}")
        else:
            report.notes.append(f"all {len(chosen)} decoded images have {channels} channels"
                                + (" (RGBA)" if channels == 4 else ""))
    return report


def verify_lmu(folder: str | os.PathLike, *, verify_all: bool = False,
               sample: int = DEFAULT_SAMPLE, seed: int = 0) -> VerifyReport:
    """Verify an AML-Cytomorphology_LMU folder: class codes, counts, readable RGBA TIFFs.

    Count differences from the full release (a partial download, a sample) are reported in
    the result, not raised. Raises ``LayoutError`` when the folder holds no class code folder
    (saying where they are when they sit one or two levels deeper, as in TCIA's archive).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LayoutError(f"{folder} is not a folder: expected the LMU class code folders "
                          f"({', '.join(LMU_COUNTS)}) in it")
    if not any((folder / code).is_dir() for code in LMU_COUNTS):
        nested = _find_dir(folder, lambda d: any((d / c).is_dir() for c in LMU_COUNTS))
        if nested is not None:
            raise LayoutError(f"the LMU class folders are in {nested}, not directly in {folder}. "
                              f"Move them up one level (e.g. mv \"{nested}\"/* \"{folder}\"/) so "
                              f"that {folder}/BAS/ exists, then run the verification again.")
        raise LayoutError(f"{folder} holds none of the LMU class folders "
                          f"({', '.join(LMU_COUNTS)}); point at the folder that contains them")
    info = REGISTRY["lmu"]
    return verify_folder(folder, info.counts, "LMU", suffixes=info.suffixes,
                         verify_all=verify_all, sample=sample, seed=seed, channels=4)


def npz_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Array shapes in an ``.npz`` file, read from the headers without loading the arrays."""
    import numpy as np

    path = Path(path)
    shapes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in zf.namelist():
                if not name.endswith(".npy"):
                    continue
                with zf.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    reader = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                              else np.lib.format.read_array_header_2_0)
                    shapes[name[:-4]] = tuple(reader(fh)[0])
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise LayoutError(f"{path} is not a readable .npz file: {exc}") from exc
    return shapes


def verify_bloodmnist(path: str | os.PathLike, size: int = 28) -> VerifyReport:
    """Check a BloodMNIST ``.npz``: six arrays, split sizes, ``size`` x ``size`` x 3 images."""
    path = Path(path)
    shapes = npz_shapes(path)
    report = VerifyReport("BloodMNIST", path, dict(BLOODMNIST_SPLITS), checked_all=True)
    for split in BLOODMNIST_SPLITS:
        images, labels = shapes.get(f"{split}_images"), shapes.get(f"{split}_labels")
        if images is None or labels is None:
            report.unreadable.append((f"{path}:{split}", "missing images or labels array"))
            continue
        report.counts[split] = images[0]
        report.decoded += images[0]
        if tuple(images[1:]) != (size, size, 3) or labels[0] != images[0]:
            report.unreadable.append((f"{path}:{split}", f"images {images}, labels {labels}; "
                                      f"expected (N, {size}, {size}, 3) and (N, 1)"))
    return report


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------

def _safe_members(archive: Path, zf: zipfile.ZipFile) -> None:
    """Refuse archives with absolute paths, ``..`` components or symbolic links."""
    for member in zf.infolist():
        name = member.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
            raise DownloadError(f"{archive}: refusing to extract {member.filename!r}: its path "
                                "leaves the target folder (path traversal). This is not the "
                                "expected dataset archive; delete it and download it again.")
        if stat.S_ISLNK(member.external_attr >> 16):
            raise DownloadError(f"{archive}: refusing to extract {member.filename!r}: it is a "
                                "symbolic link. Delete the archive and download it again.")


def _supported_methods() -> dict[int, str]:
    methods = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
    try:
        import bz2  # noqa: F401

        methods[zipfile.ZIP_BZIP2] = "bzip2"
    except ImportError:  # pragma: no cover
        pass
    try:
        import lzma  # noqa: F401

        methods[zipfile.ZIP_LZMA] = "lzma"
    except ImportError:  # pragma: no cover
        pass
    return methods


def check_archive(archive: Path, zf: zipfile.ZipFile, *, max_bytes: int = MAX_ARCHIVE_BYTES,
                  max_entries: int = MAX_ARCHIVE_ENTRIES, dest: Path | None = None) -> None:
    """Refuse, before anything is extracted, an archive that is unsafe or cannot be extracted:
    paths leaving the folder, symbolic links, more than ``max_entries`` entries or
    ``max_bytes`` uncompressed bytes (from the zip directory; a zip bomb stops here), more
    than the free space at ``dest``, encrypted members and unsupported compression methods."""
    _safe_members(archive, zf)
    infos = zf.infolist()
    again = ("Delete it and download it again (or pass --url for another address)")
    if len(infos) > max_entries:
        raise DownloadError(f"{archive}: {len(infos):,} entries, more than the limit of "
                            f"{max_entries:,} (--max-archive-entries); not extracted. This is not "
                            f"the expected dataset archive? {again}.")
    total = sum(max(0, i.file_size) for i in infos)
    if total > max_bytes:
        raise DownloadError(f"{archive}: unpacks to {total:,} bytes, more than the limit of "
                            f"{max_bytes:,} (--max-archive-gb); not extracted. {again}, or raise "
                            "the limit if the archive is right.")
    if dest is not None:
        free = shutil.disk_usage(dest).free
        if total > free:
            raise DownloadError(f"{archive}: unpacks to {total:,} bytes but only {free:,} are free "
                                f"in {dest}; not extracted. Free some space and run it again.")
    methods = _supported_methods()
    for info in infos:
        if info.flag_bits & 0x1:
            raise DownloadError(f"{archive}: member {info.filename!r} is encrypted (password "
                                f"protected); the dataset archives are not. {again}.")
        if info.compress_type not in methods:
            raise DownloadError(f"{archive}: member {info.filename!r} uses compression method "
                                f"{info.compress_type}, which cannot be extracted here (supported: "
                                f"{', '.join(methods.values())}). Unzip it with another tool "
                                "(e.g. 7-Zip) and put the folder in place by hand.")


def _unzip(archive: Path, dest: Path, *, max_bytes: int = MAX_ARCHIVE_BYTES,
           max_entries: int = MAX_ARCHIVE_ENTRIES) -> None:
    """Extract every member of ``archive`` into ``dest`` after the checks of ``check_archive``."""
    import zlib

    try:
        with zipfile.ZipFile(archive) as zf:
            check_archive(archive, zf, max_bytes=max_bytes, max_entries=max_entries, dest=dest)
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise DownloadError(f"{archive} is not a valid zip archive or is damaged ({exc}); delete "
                            "it and download it again") from exc
    except (NotImplementedError, RuntimeError, zlib.error, EOFError, ValueError) as exc:
        raise DownloadError(f"{archive}: could not be extracted ({type(exc).__name__}: {exc}); "
                            "delete it and download it again, or unzip it with another tool and "
                            "put the folder in place by hand") from exc


def _find_dir(top: Path, accept: Callable[[Path], bool], depth: int = 3) -> Path | None:
    """The first folder under ``top`` (breadth first, sorted, at most ``depth`` deep) accepted."""
    level = [top]
    for _ in range(depth + 1):
        for folder in level:
            if accept(folder):
                return folder
        level = [c for f in level for c in sorted(f.iterdir())
                 if c.is_dir() and c.name != "__MACOSX" and not c.name.startswith(".")]
    return None


def extract_archive(archive: str | os.PathLike, target: str | os.PathLike,
                    info: DatasetInfo, *, verify_all: bool = False,
                    max_bytes: int = MAX_ARCHIVE_BYTES,
                    max_entries: int = MAX_ARCHIVE_ENTRIES) -> VerifyReport:
    """Extract a dataset zip so that ``target`` appears only once complete and verified.

    The archive is unpacked into a temporary folder beside ``target``; the dataset root is the
    folder named like ``target`` (at any wrapper depth up to 3, ``__MACOSX`` ignored) or one
    holding every class folder; a single inner zip is unpacked as well. The root is verified
    and renamed into place; on any failure the temporary folder is removed. ``max_bytes`` and
    ``max_entries`` bound the archive (``check_archive``), checked before extraction.
    """
    archive, target = Path(archive), Path(target)
    if target.exists():
        raise LayoutError(f"{target} already exists; move it aside to extract {archive} again")
    tmp = temporary_sibling(target, "extract")
    limits = {"max_bytes": max_bytes, "max_entries": max_entries}
    try:
        _unzip(archive, tmp, **limits)
        tops = {PurePosixPath(k).parts[0] for k in info.counts}

        def accept(d: Path) -> bool:
            return d.name == target.name or all((d / t).is_dir() for t in tops)

        root = _find_dir(tmp, accept)
        if root is None:
            inner = [p for p in tmp.rglob("*.zip") if "__MACOSX" not in p.parts]
            if len(inner) == 1:
                _unzip(inner[0], tmp / ".inner", **limits)
                root = _find_dir(tmp / ".inner", accept)
        if root is None:
            found = sorted(p.name for p in tmp.iterdir())
            raise LayoutError(f"{archive} does not contain {target.name}/ (or its class folders "
                              f"{', '.join(sorted(tops))}); its top level holds {found}. Is it "
                              "the right archive? Check the dataset page or pass --url.")
        report = verify_folder(root, info.counts, info.key.upper(), suffixes=info.suffixes,
                               verify_all=verify_all)
        if not report.usable:
            raise LayoutError(f"{archive} is incomplete or damaged; nothing was put in place.\n"
                              + report.summary())
        os.replace(root, target)
        report.root = target
        report.unreadable = [(p.replace(str(root), str(target)), r) for p, r in report.unreadable]
        report.skipped = [(p.replace(str(root), str(target)), r) for p, r in report.skipped]
        return report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------------------------
# Per-dataset downloads
# --------------------------------------------------------------------------------------------

@dataclass
class DownloadResult:
    """Outcome of ``download_dataset``: where the data is and what the verification found."""

    dataset: str
    path: Path
    status: str  # "downloaded", "already present" or "verified"
    report: VerifyReport | None = None
    messages: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """Status line, verification summary and messages."""
        lines = [f"{self.dataset}: {self.status} -> {self.path}"]
        if self.report is not None:
            lines.append(self.report.summary())
        return "\n".join(lines + self.messages)


def _records_path(data_dir: Path) -> Path:
    return data_dir / RECORD_NAME


def read_records(data_dir: str | os.PathLike) -> dict:
    """The digests recorded in ``DATA_DIR/.wbc-downloads.json`` (empty when none)."""
    path = _records_path(Path(data_dir))
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise WbcError(f"cannot read {path} ({exc}); fix or delete it (it only records the "
                       "digests of verified downloads)") from exc


def _record(data_dir: Path, key: str, entry: dict) -> None:
    records = read_records(data_dir)
    records[key] = entry
    write_text_atomic(_records_path(data_dir), json.dumps(records, indent=2, sort_keys=True) + "\n")


def _data_dir(data_dir: str | os.PathLike, create: bool = True) -> Path:
    path = Path(data_dir).expanduser().resolve()
    if path.exists() and not path.is_dir():
        raise WbcError(f"data folder {path} is a file, not a folder")
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _existing(info: DatasetInfo, target: Path, report: VerifyReport) -> DownloadResult:
    """Report a dataset that is already in place; refuse to touch an unusable one."""
    if not report.usable:
        raise LayoutError(f"{target} exists but is incomplete or damaged; it was left untouched. "
                          "Move it aside (or delete it) and run the command again to download "
                          f"a fresh copy.\n{report.summary()}")
    return DownloadResult(info.key, target, "already present", report,
                          ["left as it is (delete or move it to download again)"])


def download_pbc(data_dir: str | os.PathLike, *, url: str | None = None,
                 verify_all: bool = False, progress: bool = True,
                 max_archive_bytes: int = MAX_ARCHIVE_BYTES,
                 max_archive_entries: int = MAX_ARCHIVE_ENTRIES) -> DownloadResult:
    """Download the Mendeley PBC archive, verify its content and extract it into place
    (archive size and entry count checked against the limits first)."""
    info = REGISTRY["pbc"]
    data_dir = _data_dir(data_dir)
    target = data_dir / info.target
    if target.exists():
        return _existing(info, target, verify_folder(target, info.counts, "PBC",
                                                     suffixes=info.suffixes, verify_all=verify_all))
    url = url or info.urls["archive"]
    archive = data_dir / DOWNLOADS_DIRNAME / f"{info.target}.zip"
    record = read_records(data_dir).get(info.key)
    try:
        fetch_url(url, archive, expected_sha256=record and record["sha256"], progress=progress)
    except ChecksumError as exc:
        raise ChecksumError(f"{exc}\nThe expected SHA-256 is the one recorded for the first "
                            f"verified PBC archive in {_records_path(data_dir)}; remove its "
                            "'pbc' entry if the dataset owner has published a new archive."
                            ) from exc
    try:
        report = extract_archive(archive, target, info, verify_all=verify_all,
                                 max_bytes=max_archive_bytes, max_entries=max_archive_entries)
    except (LayoutError, DownloadError) as exc:
        raise type(exc)(f"{exc}\nThe archive is kept at {archive}: delete it before trying "
                        "again (with --url for another address).") from exc
    messages = [f"archive kept at {archive} (delete it to save space)"]
    if report.complete and record is None:
        _record(data_dir, info.key, {
            "archive": archive.name, "url": url, "sha256": file_digest(archive, "sha256"),
            "bytes": archive.stat().st_size, "verified": datetime.date.today().isoformat()})
        messages.append(f"SHA-256 of the verified archive recorded in {_records_path(data_dir)}")
    elif not report.complete:
        messages.append("counts differ from the published release: the archive digest was not "
                        "recorded as verified")
    return DownloadResult(info.key, target, "downloaded", report, messages)


def _kaggle_help(target: Path, exc: BaseException) -> str:
    return (f"could not download the Kaggle ALL dataset with kagglehub ({type(exc).__name__}: "
            f"{exc}).\nEither set up Kaggle credentials: create an API token on "
            "https://www.kaggle.com/settings (\"Create New Token\"), save kaggle.json as "
            "~/.kaggle/kaggle.json (chmod 600) or export KAGGLE_USERNAME and KAGGLE_KEY, "
            "then run the command again;\nor download it by hand from "
            f"{REGISTRY['all'].page} (Download button), unzip it and put its Original/ and "
            f"Segmented/ folders in {target}/ (so that {target}/Original/Benign/ exists).")


def _link_or_copy_tree(src: Path, dst: Path, names: dict[str, str], cache: Path | None = None) -> None:
    """Hard-link (or copy) ``src`` into ``dst``, renaming first-level folders via ``names``.

    Symbolic links (kagglehub may leave some in its cache) are never carried over as links: a
    link whose target lies inside ``cache`` (default ``src``) is resolved and its file copied
    (a linked folder is walked); one that points outside it, or nowhere, is refused with a
    DownloadError, since the dataset would otherwise depend on (or expose) files elsewhere.
    """
    src = Path(src)
    cache = Path(os.path.realpath(cache or src))
    seen: set[str] = set()

    def inside(real: str) -> bool:
        return real == str(cache) or real.startswith(str(cache) + os.sep)

    def copy_from(folder: Path, rel_parts: tuple[str, ...]) -> None:
        real_folder = os.path.realpath(folder)
        if real_folder in seen:  # a link loop
            return
        seen.add(real_folder)
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            parts = rel_parts + (entry.name,)
            first = names.get(parts[0].casefold(), parts[0])
            out = dst.joinpath(first, *parts[1:])
            path = Path(entry.path)
            if entry.is_symlink():
                real = os.path.realpath(path)
                if not inside(real) or not os.path.exists(real):
                    where = "points nowhere" if not os.path.exists(real) else f"points outside it, to {real}"
                    raise DownloadError(f"the Kaggle download holds a symbolic link {display_path(path)} "
                                        f"that {where} (cache {cache}); refusing to copy it. Delete "
                                        "the kagglehub cache and download again, or put the folders "
                                        "in place by hand.")
                if os.path.isdir(real):
                    copy_from(Path(real), parts)
                else:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(real, out)  # a real file, never a link
                continue
            if entry.is_dir(follow_symlinks=False):
                out.mkdir(parents=True, exist_ok=True)
                copy_from(path, parts)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(path, out, follow_symlinks=False)
            except OSError:
                shutil.copy2(path, out)

    copy_from(src, ())


def download_all(data_dir: str | os.PathLike, *, verify_all: bool = False,
                 progress: bool = True) -> DownloadResult:
    """Fetch Kaggle ``mehradaria/leukemia`` with kagglehub into ``DATA_DIR/ALL_Kaggle/``."""
    info = REGISTRY["all"]
    data_dir = _data_dir(data_dir)
    target = data_dir / info.target
    if target.exists():
        return _existing(info, target, verify_folder(target, info.counts, "ALL",
                                                     suffixes=info.suffixes, verify_all=verify_all))
    try:
        import kagglehub

        source = Path(kagglehub.dataset_download(info.urls["kaggle"]))
    except Exception as exc:  # no credentials, no network, API change: all need the same help
        raise DownloadError(_kaggle_help(target, exc)) from exc
    wanted = {v.casefold(): v for v in ALL_VERSIONS}
    root = _find_dir(source, lambda d: wanted.keys() <= {c.name.casefold() for c in d.iterdir()
                                                          if c.is_dir()})
    if root is None:
        raise LayoutError(f"kagglehub returned {source}, which holds no Original/ and Segmented/ "
                          f"folders (top level: {sorted(p.name for p in source.iterdir())}). "
                          + _kaggle_help(target, LayoutError("unexpected layout")))
    tmp = temporary_sibling(target, "copy")
    try:
        classes = {c.casefold(): c for c in ALL_CLASS_COUNTS}
        cache = Path(os.path.realpath(source))
        for child in sorted(p for p in root.iterdir() if p.is_dir()):
            version = wanted.get(child.name.casefold())
            if version:
                real = os.path.realpath(child)
                if not (real == str(cache) or real.startswith(str(cache) + os.sep)):
                    raise DownloadError(f"the Kaggle download's {child.name}/ is a link to {real}, "
                                        f"outside the kagglehub cache {cache}; refusing to copy it")
                _link_or_copy_tree(child, tmp / version, classes, cache=cache)
        report = verify_folder(tmp, info.counts, "ALL", suffixes=info.suffixes,
                               verify_all=verify_all)
        if not report.usable:
            raise LayoutError(f"the Kaggle download in {root} is incomplete or damaged; nothing "
                              f"was put in place.\n{report.summary()}")
        os.replace(tmp, target)
        report.root = target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DownloadResult(info.key, target, "downloaded", report,
                          [f"files linked (or copied) from the kagglehub cache {root}"])


def download_bloodmnist(data_dir: str | os.PathLike, *, size: int = 28, url: str | None = None,
                        progress: bool = True) -> DownloadResult:
    """Download ``bloodmnist[_SIZE].npz`` from Zenodo and check its published MD5 and shapes."""
    info = REGISTRY["bloodmnist"]
    if size not in info.urls:
        raise WbcError(f"BloodMNIST comes in sizes {', '.join(map(str, info.urls))}, not {size}")
    data_dir = _data_dir(data_dir)
    dest = data_dir / ("bloodmnist.npz" if size == 28 else f"bloodmnist_{size}.npz")
    status = "already present" if dest.exists() else "downloaded"
    fetch_url(url or info.urls[size], dest, expected_md5=info.md5[size], progress=progress)
    report = verify_bloodmnist(dest, size)
    if not report.usable:
        raise LayoutError(f"{dest} matches its MD5 but not the expected arrays:\n"
                          + report.summary())
    return DownloadResult(info.key, dest, status, report, [f"MD5 {info.md5[size]} verified"])


def lmu_instructions(data_dir: str | os.PathLike) -> str:
    """How to get AML-Cytomorphology_LMU from TCIA and where to put it."""
    info, target = REGISTRY["lmu"], Path(data_dir) / LMU_DIRNAME
    return f"""AML-Cytomorphology_LMU is distributed by The Cancer Imaging Archive (TCIA), not as a
plain HTTPS file, so it is downloaded by hand (about 11 GB, 18,365 TIFF images):
  1. Open {info.page}
     (DOI {info.doi}, licence {info.licence}; citation in data/README.md)
  2. In "Data Access", download the images with the tool the page offers (IBM Aspera Connect
     or the NBIA Data Retriever with the page's .tcia manifest).
  3. Unpack it and move the folder that holds the 15 class folders (BAS, EBO, ... PMO) to
       {target}
     so that {target / 'BAS'} exists
     (the archive may wrap them in one or two extra folders).
  4. Verify it:  python -m wbc download lmu --data-dir {Path(data_dir)} [--verify-all]"""


def download_lmu(data_dir: str | os.PathLike, *, verify_all: bool = False,
                 echo: Callable[[str], None] = print) -> DownloadResult:
    """Print the TCIA route, then verify ``DATA_DIR/AML-Cytomorphology_LMU`` with ``verify_lmu``."""
    data_dir = _data_dir(data_dir, create=False)
    echo(lmu_instructions(data_dir))
    target = data_dir / LMU_DIRNAME
    if not target.is_dir():
        raise DownloadError(f"{target} not found: download the collection as described above, "
                            "put it there and run the command again to verify it")
    report = verify_lmu(target, verify_all=verify_all)
    return DownloadResult("lmu", target, "verified", report)


DOWNLOADERS: dict[str, Callable[..., DownloadResult]] = {
    "pbc": download_pbc, "all": download_all, "bloodmnist": download_bloodmnist,
    "lmu": download_lmu,
}


def download_dataset(name: str, data_dir: str | os.PathLike, **options) -> DownloadResult:
    """Download (or, for ``lmu``, verify) dataset ``name`` into ``data_dir``; idempotent.

    ``options`` go to the dataset's function: ``url``, ``verify_all``, ``progress`` (pbc);
    ``verify_all``, ``progress`` (all); ``size``, ``url``, ``progress`` (bloodmnist);
    ``verify_all`` (lmu). A dataset already complete is verified, reported and left alone.
    """
    key = str(name).lower()
    if key not in DOWNLOADERS:
        raise WbcError(f"unknown dataset {name!r}: choose one of {', '.join(DOWNLOADERS)}")
    func = DOWNLOADERS[key]
    accepted = [p for p in inspect.signature(func).parameters if p != "data_dir"]
    wrong = sorted(set(options) - set(accepted))
    if wrong:
        raise WbcError(f"option(s) {', '.join(wrong)} do not apply to {key}; it accepts "
                       f"{', '.join(accepted)}")
    return func(data_dir, **options)
