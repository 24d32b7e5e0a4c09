"""Dataset downloads: a registry kept as data, resumable checksummed fetches, safe extraction, verification.

The registry is ``resources/datasets.json`` (name -> title, citation, page, DOI, licence, folder,
URLs, published MD5s, per-class counts of the full release, where each number comes from). Four
datasets land in one data folder under their standard names (``data/README.md``): ``pbc``
(Mendeley archive over HTTPS), ``all`` (Kaggle, through kagglehub), ``bloodmnist`` (Zenodo
``.npz``, checked against MedMNIST's MD5s) and ``lmu`` (TCIA: the route is printed and the
folder the user downloaded is verified). Where no checksum is published the content is verified
(folders, per-class counts, images decode) and the SHA-256 of the first verified archive is
recorded in ``DATA_DIR/.wbc-downloads.json``.

``fetch_url`` is written here rather than taken from pooch or ``keras.utils.get_file``: both
download into a fresh temporary file and delete it on failure, so neither resumes a partial
download, and the guarantees below (Range resume, restart on a wrong Content-Range, an oversize
part file discarded) are what the reliability tests hold.
"""

from __future__ import annotations

import datetime
import inspect
import json
import os
import random
import re
import shutil
import stat
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path, PurePosixPath

from wbc.config import LMU_DIRNAME, resolve_data_dir
from wbc.errors import DownloadError, LayoutError, WbcError
from wbc.fileio import display_path, file_digest, read_json, temporary_sibling, write_text_atomic
from wbc.labels import ALL_CLASSES, ALL_VERSIONS


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
    counts: dict = field(default_factory=dict)  # class folder (or split) -> files in the full release
    suffixes: tuple = (".jpg",)
    provenance: str = ""


def _variant(key: str):
    return int(key) if key.isdigit() else key


def load_registry() -> dict[str, DatasetInfo]:
    """The registry from ``resources/datasets.json``."""
    entries = json.loads((resources.files("wbc") / "resources" / "datasets.json").read_text(encoding="utf-8"))
    return {
        key: DatasetInfo(
            key=key,
            **{
                **e,
                "suffixes": tuple(e["suffixes"]),
                "urls": {_variant(k): v for k, v in e["urls"].items()},
                "md5": {_variant(k): v for k, v in e["md5"].items()},
            },
        )
        for key, e in entries.items()
    }


REGISTRY: dict[str, DatasetInfo] = load_registry()
PBC_COUNTS: dict[str, int] = REGISTRY["pbc"].counts
LMU_COUNTS: dict[str, int] = REGISTRY["lmu"].counts
ALL_COUNTS: dict[str, int] = REGISTRY["all"].counts
BLOODMNIST_SPLITS: dict[str, int] = REGISTRY["bloodmnist"].counts

#: Archive limits, checked from the zip directory BEFORE anything is extracted (settable per call
#: and with --max-archive-gb / --max-archive-entries): the PBC archive unpacks to about 270 MB in
#: 17,000 files, so these leave ample room and stop a zip bomb or a wrong file.
MAX_ARCHIVE_BYTES = 20 * 1024**3
MAX_ARCHIVE_ENTRIES = 200_000
RECORD_NAME = ".wbc-downloads.json"  # SHA-256 of the first verified archive, per dataset
DOWNLOADS_DIRNAME = ".downloads"  # archives kept beside the extracted data
DEFAULT_SAMPLE = 200  # images decoded per dataset unless verify_all
ZIP_METHODS = {
    zipfile.ZIP_STORED: "stored",
    zipfile.ZIP_DEFLATED: "deflate",
    zipfile.ZIP_BZIP2: "bzip2",
    zipfile.ZIP_LZMA: "lzma",
}


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
                what = (
                    "The download was deleted. Run the command again to download it afresh; if it "
                    "fails again, the file on the server is not the expected one: check the dataset "
                    "page or give the right address with --url."
                )
            else:
                what = f"The file was left untouched: delete {path} and run the command again to download it afresh."
            raise ChecksumError(
                f"checksum mismatch for {url} ({path.name}): expected {algorithm} {want.lower()}, got {got}. {what}"
            )


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``(first byte, total length)`` of a Content-Range header (``bytes 100-199/200``, ``bytes */200``)."""
    match = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not match:
        return None, None
    first, total = match.groups()
    return (int(first) if first else None), (int(total) if total and total != "*" else None)


def fetch_url(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_md5: str | None = None,
    expected_sha256: str | None = None,
    chunk: int = 1 << 20,
    progress: bool = True,
    timeout: float = 60,
) -> Path:
    """Download ``url`` to ``dest``, resuming ``dest.part`` with an HTTP Range request.

    Only a complete file whose digests match is renamed to ``dest``; an interrupted download keeps
    the part file for the next call. A part file is only ever extended by the bytes that follow
    it: the download restarts from byte 0, into a fresh part file, when the server ignores Range
    (200), answers with a Content-Range that does not start where the part file ends, or says the
    part file is longer than the file (416). An existing ``dest`` is checked and kept. Raises
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
    try:
        for _attempt in range(3):
            headers = {"Accept-Encoding": "identity"}  # byte offsets must refer to the file itself
            if offset:
                headers["Range"] = f"bytes={offset}-"
            with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
                first, remote = _content_range(resp.headers.get("Content-Range"))
                if resp.status_code == 416 and offset:
                    if remote == offset or (
                        remote is None
                        and expected
                        and all(file_digest(part, a) == w.lower() for a, w in expected.items())
                    ):
                        total = offset  # the part file already holds every byte
                        break
                    part.unlink(missing_ok=True)  # longer than the remote file (or unknown): fetch again
                    offset = 0
                    continue
                if resp.status_code >= 400:
                    raise DownloadError(
                        f"download of {url} failed: HTTP {resp.status_code} {resp.reason}. "
                        "Check the address (or pass --url) and your network, then run "
                        "the command again."
                    )
                header = resp.headers.get("Content-Length")
                length = int(header) if header and header.isdigit() else None
                if resp.status_code == 206 and (first != offset or (remote is not None and remote < offset)):
                    part.unlink(missing_ok=True)  # not the bytes that follow the part file: start over
                    offset = 0
                    continue
                resumed = resp.status_code == 206 and offset > 0
                if not resumed:  # 200 (the whole file, whatever was asked) or a 206 from byte 0
                    part.unlink(missing_ok=True)
                    offset = 0
                total = (
                    length
                    if resp.status_code != 206
                    else remote
                    if remote is not None
                    else (None if length is None else offset + length)
                )
                with (
                    open(part, "ab" if resumed else "xb") as fh,
                    tqdm(
                        total=total,
                        initial=offset,
                        unit="B",
                        unit_scale=True,
                        unit_divisor=1024,
                        desc=dest.name,
                        disable=not progress,
                        leave=False,
                    ) as bar,
                ):
                    for block in resp.iter_content(chunk_size=chunk):
                        fh.write(block)
                        bar.update(len(block))
                break
        else:
            raise DownloadError(
                f"download of {url} failed: the server keeps answering with bytes that "
                "do not fit the partial file; it was deleted. Run the command again "
                "later, or pass another --url."
            )
    except requests.RequestException as exc:
        have = part.stat().st_size if part.exists() else 0
        raise DownloadError(
            f"download of {url} was interrupted after {have:,} bytes ({exc}). The partial "
            f"file {part} is kept: run the same command again to resume."
        ) from exc
    have = part.stat().st_size if part.exists() else 0
    if total is not None and have < total:
        raise DownloadError(
            f"download of {url} ended early: {have:,} of {total:,} bytes. The partial "
            f"file {part} is kept: run the same command again to resume."
        )
    if total is not None and have > total:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"download of {url} gave {have:,} bytes where the server announced "
            f"{total:,}; the file was deleted. Run the command again."
        )
    _check_digests(part, url, expected, delete=True)
    if not expected and dest.suffix.lower() == ".zip" and not zipfile.is_zipfile(part):
        raise DownloadError(
            f"download of {url} is not a complete zip archive ({have:,} bytes, no "
            f"checksum to compare). The partial file {part} is kept: run the same "
            "command again to resume, or delete it to start over."
        )
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
        return {
            name: (self.counts.get(name, 0), n) for name, n in self.expected.items() if self.counts.get(name, 0) != n
        }

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
        lines = [
            f"{self.dataset} at {self.root}: {len(self.counts)}/{len(self.expected)} class "
            f"folders, {found:,} files (full release: {published:,})"
        ]
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
        lines.append(f"  decoded {self.decoded:,} files ({how}): {len(self.unreadable)} unreadable")
        lines += [f"    unreadable: {display_path(p)} ({why})" for p, why in self.unreadable[:20]]
        lines += [f"    skipped: {display_path(p)} ({why})" for p, why in self.skipped[:20]]
        if len(self.skipped) > 20:
            lines.append(f"    ... and {len(self.skipped) - 20} more skipped files")
        return "\n".join(lines + [f"  note: {n}" for n in self.notes])


def verify_folder(
    root: str | os.PathLike,
    expected: dict[str, int],
    dataset: str,
    *,
    suffixes: tuple[str, ...] = (".jpg",),
    verify_all: bool = False,
    sample: int = DEFAULT_SAMPLE,
    seed: int = 0,
    channels: int | None = None,
) -> VerifyReport:
    """Count the files of each expected class folder under ``root`` and decode some (or all).

    Hidden files (PBC's macOS ``.DS_169665.jpg``) and files without an image suffix are skipped
    and listed, never counted. Images are read through ``wbc.images`` (a huge file or a
    decompression bomb is refused before it is read). With ``channels`` set, decoded images with
    another channel count are noted. Nothing under ``root`` is modified.
    """
    from wbc.images import BadImageError, read_raw

    root = Path(root)
    report = VerifyReport(dataset, root, dict(expected), checked_all=verify_all)
    images: list[Path] = []
    for name in expected:
        if not (root / name).is_dir():
            continue
        count = 0
        for path in sorted((root / name).iterdir()):
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
    for ancestor in sorted(a for a in ancestors if (root / a).is_dir()):
        for child in sorted(p for p in (root / ancestor).iterdir() if p.is_dir()):
            rel = ancestor / child.name
            if (
                str(rel) not in expected
                and rel not in ancestors
                and not child.name.startswith(".")
                and child.name != "__MACOSX"
            ):
                report.unexpected.append(str(rel))
    chosen = images if verify_all or len(images) <= sample else random.Random(seed).sample(images, sample)
    report.checked_all = len(chosen) == len(images)
    wrong_channels = []
    for path in chosen:
        report.decoded += 1
        try:
            image = read_raw(path)
        except BadImageError as exc:
            report.unreadable.append((str(path), exc.reason))
            continue
        if channels is not None and (image.shape[2] if image.ndim == 3 else 1) != channels:
            wrong_channels.append(path)
    if channels is not None and chosen:
        report.notes.append(
            f"{len(wrong_channels)} of {len(chosen)} decoded images do not have {channels} "
            f"channels, e.g. {wrong_channels[0]}"
            if wrong_channels
            else f"all {len(chosen)} decoded images have {channels} channels" + (" (RGBA)" if channels == 4 else "")
        )
    return report


def verify_lmu(
    folder: str | os.PathLike, *, verify_all: bool = False, sample: int = DEFAULT_SAMPLE, seed: int = 0
) -> VerifyReport:
    """Verify an AML-Cytomorphology_LMU folder: class codes, counts, readable RGBA TIFFs.

    Count differences (a partial download, a sample) are reported, not raised. LayoutError when
    the folder holds no class code folder (saying where they are when one or two levels deeper,
    as in TCIA's archive).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LayoutError(
            f"{folder} is not a folder: expected the LMU class code folders ({', '.join(LMU_COUNTS)}) in it"
        )
    if not any((folder / code).is_dir() for code in LMU_COUNTS):
        nested = _find_dir(folder, lambda d: any((d / c).is_dir() for c in LMU_COUNTS))
        if nested is not None:
            raise LayoutError(
                f"the LMU class folders are in {nested}, not directly in {folder}. "
                f'Move them up one level (e.g. mv "{nested}"/* "{folder}"/) so '
                f"that {folder}/BAS/ exists, then run the verification again."
            )
        raise LayoutError(
            f"{folder} holds none of the LMU class folders ({', '.join(LMU_COUNTS)}); "
            "point at the folder that contains them"
        )
    info = REGISTRY["lmu"]
    return verify_folder(
        folder, info.counts, "LMU", suffixes=info.suffixes, verify_all=verify_all, sample=sample, seed=seed, channels=4
    )


def npz_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Array shapes in an ``.npz`` file, read from the headers without loading the arrays."""
    import numpy as np

    shapes = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for name in (n for n in zf.namelist() if n.endswith(".npy")):
                with zf.open(name) as fh:
                    version = np.lib.format.read_magic(fh)
                    reader = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
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
            report.unreadable.append(
                (f"{path}:{split}", f"images {images}, labels {labels}; expected (N, {size}, {size}, 3) and (N, 1)")
            )
    return report


# --------------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------------


def check_archive(
    archive: Path,
    zf: zipfile.ZipFile,
    *,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_entries: int = MAX_ARCHIVE_ENTRIES,
    dest: Path | None = None,
) -> None:
    """Refuse, before anything is extracted, an archive that is unsafe or cannot be extracted:
    paths leaving the folder, symbolic links, more than ``max_entries`` entries or ``max_bytes``
    uncompressed bytes (from the zip directory: a zip bomb stops here), more than the free space
    at ``dest``, encrypted members and unsupported compression methods."""
    again = "Delete it and download it again (or pass --url for another address)"
    infos = zf.infolist()
    for member in infos:
        name = member.filename.replace("\\", "/")
        parts = PurePosixPath(name).parts
        if name.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
            raise DownloadError(
                f"{archive}: refusing to extract {member.filename!r}: its path leaves the "
                "target folder (path traversal). This is not the expected dataset "
                "archive; delete it and download it again."
            )
        if stat.S_ISLNK(member.external_attr >> 16):
            raise DownloadError(
                f"{archive}: refusing to extract {member.filename!r}: it is a symbolic "
                "link. Delete the archive and download it again."
            )
    if len(infos) > max_entries:
        raise DownloadError(
            f"{archive}: {len(infos):,} entries, more than the limit of {max_entries:,} "
            f"(--max-archive-entries); not extracted. This is not the expected dataset "
            f"archive? {again}."
        )
    total = sum(max(0, i.file_size) for i in infos)
    if total > max_bytes:
        raise DownloadError(
            f"{archive}: unpacks to {total:,} bytes, more than the limit of {max_bytes:,} "
            f"(--max-archive-gb); not extracted. {again}, or raise the limit if the "
            "archive is right."
        )
    if dest is not None and total > shutil.disk_usage(dest).free:
        raise DownloadError(
            f"{archive}: unpacks to {total:,} bytes but only {shutil.disk_usage(dest).free:,} "
            f"are free in {dest}; not extracted. Free some space and run it again."
        )
    for info in infos:
        if info.flag_bits & 0x1:
            raise DownloadError(
                f"{archive}: member {info.filename!r} is encrypted (password protected); "
                f"the dataset archives are not. {again}."
            )
        if info.compress_type not in ZIP_METHODS:
            raise DownloadError(
                f"{archive}: member {info.filename!r} uses compression method "
                f"{info.compress_type}, which cannot be extracted here (supported: "
                f"{', '.join(ZIP_METHODS.values())}). Unzip it with another tool "
                "(e.g. 7-Zip) and put the folder in place by hand."
            )


def _unzip(archive: Path, dest: Path, **limits) -> None:
    """Extract every member of ``archive`` into ``dest`` after the checks of ``check_archive``."""
    import zlib

    try:
        with zipfile.ZipFile(archive) as zf:
            check_archive(archive, zf, dest=dest, **limits)
            zf.extractall(dest)
    except zipfile.BadZipFile as exc:
        raise DownloadError(
            f"{archive} is not a valid zip archive or is damaged ({exc}); delete it and download it again"
        ) from exc
    except (NotImplementedError, RuntimeError, zlib.error, EOFError, ValueError) as exc:
        raise DownloadError(
            f"{archive}: could not be extracted ({type(exc).__name__}: {exc}); delete it "
            "and download it again, or unzip it with another tool and put the folder "
            "in place by hand"
        ) from exc


def _find_dir(top: Path, accept: Callable[[Path], bool], depth: int = 3) -> Path | None:
    """The first folder under ``top`` (breadth first, sorted, at most ``depth`` deep) accepted."""
    level = [top]
    for _ in range(depth + 1):
        for folder in level:
            if accept(folder):
                return folder
        level = [
            c
            for f in level
            for c in sorted(f.iterdir())
            if c.is_dir() and c.name != "__MACOSX" and not c.name.startswith(".")
        ]
    return None


def extract_archive(
    archive: str | os.PathLike,
    target: str | os.PathLike,
    info: DatasetInfo,
    *,
    verify_all: bool = False,
    max_bytes: int = MAX_ARCHIVE_BYTES,
    max_entries: int = MAX_ARCHIVE_ENTRIES,
) -> VerifyReport:
    """Extract a dataset zip so that ``target`` appears only once complete and verified.

    The archive is unpacked into a temporary folder beside ``target``; the dataset root is the
    folder named like ``target`` (under up to 3 wrapper folders, ``__MACOSX`` ignored) or one
    holding every class folder; a single inner zip is unpacked as well. The root is verified and
    renamed into place; on any failure the temporary folder is removed. ``max_bytes`` and
    ``max_entries`` bound the archive, checked before extraction.
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
        inner = [p for p in tmp.rglob("*.zip") if "__MACOSX" not in p.parts]
        if root is None and len(inner) == 1:
            _unzip(inner[0], tmp / ".inner", **limits)
            root = _find_dir(tmp / ".inner", accept)
        if root is None:
            raise LayoutError(
                f"{archive} does not contain {target.name}/ (or its class folders "
                f"{', '.join(sorted(tops))}); its top level holds "
                f"{sorted(p.name for p in tmp.iterdir())}. Is it the right archive? Check "
                "the dataset page or pass --url."
            )
        report = verify_folder(root, info.counts, info.key.upper(), suffixes=info.suffixes, verify_all=verify_all)
        if not report.usable:
            raise LayoutError(f"{archive} is incomplete or damaged; nothing was put in place.\n" + report.summary())
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


def read_records(data_dir: str | os.PathLike) -> dict:
    """The digests recorded in ``DATA_DIR/.wbc-downloads.json`` (empty when none)."""
    path = Path(data_dir) / RECORD_NAME
    records = read_json(path) if path.exists() else {}
    if records is None:
        raise WbcError(f"cannot read {path}; fix or delete it (it only records the digests of verified downloads)")
    return records


def _data_dir(data_dir: str | os.PathLike, create: bool = True) -> Path:
    path = resolve_data_dir(data_dir, must_exist=not create)
    assert path is not None  # None only when no folder is given, and data_dir is one
    if create:
        path.mkdir(parents=True, exist_ok=True)
    return path


def _existing(info: DatasetInfo, target: Path, verify_all: bool) -> DownloadResult:
    """Report a dataset that is already in place; refuse to touch an unusable one."""
    report = verify_folder(target, info.counts, info.key.upper(), suffixes=info.suffixes, verify_all=verify_all)
    if not report.usable:
        raise LayoutError(
            f"{target} exists but is incomplete or damaged; it was left untouched. Move it "
            "aside (or delete it) and run the command again to download a fresh copy.\n" + report.summary()
        )
    return DownloadResult(
        info.key, target, "already present", report, ["left as it is (delete or move it to download again)"]
    )


def download_pbc(
    data_dir: str | os.PathLike,
    *,
    url: str | None = None,
    verify_all: bool = False,
    progress: bool = True,
    max_archive_bytes: int = MAX_ARCHIVE_BYTES,
    max_archive_entries: int = MAX_ARCHIVE_ENTRIES,
) -> DownloadResult:
    """Download the Mendeley PBC archive, verify its content and extract it into place (archive
    size and entry count checked against the limits first)."""
    info = REGISTRY["pbc"]
    data_dir = _data_dir(data_dir)
    target = data_dir / info.target
    if target.exists():
        return _existing(info, target, verify_all)
    url = url or info.urls["archive"]
    archive = data_dir / DOWNLOADS_DIRNAME / f"{info.target}.zip"
    record = read_records(data_dir).get(info.key)
    try:
        fetch_url(url, archive, expected_sha256=record and record["sha256"], progress=progress)
    except ChecksumError as exc:
        raise ChecksumError(
            f"{exc}\nThe expected SHA-256 is the one recorded for the first verified "
            f"PBC archive in {data_dir / RECORD_NAME}; remove its 'pbc' entry if the "
            "dataset owner has published a new archive."
        ) from exc
    try:
        report = extract_archive(
            archive, target, info, verify_all=verify_all, max_bytes=max_archive_bytes, max_entries=max_archive_entries
        )
    except (LayoutError, DownloadError) as exc:
        raise type(exc)(
            f"{exc}\nThe archive is kept at {archive}: delete it before trying again (with --url for another address)."
        ) from exc
    messages = [f"archive kept at {archive} (delete it to save space)"]
    if report.complete and record is None:
        records = {
            **read_records(data_dir),
            info.key: {
                "archive": archive.name,
                "url": url,
                "sha256": file_digest(archive, "sha256"),
                "bytes": archive.stat().st_size,
                "verified": datetime.date.today().isoformat(),
            },
        }
        write_text_atomic(data_dir / RECORD_NAME, json.dumps(records, indent=2, sort_keys=True) + "\n")
        messages.append(f"SHA-256 of the verified archive recorded in {data_dir / RECORD_NAME}")
    elif not report.complete:
        messages.append("counts differ from the published release: the archive digest was not recorded as verified")
    return DownloadResult(info.key, target, "downloaded", report, messages)


def _kaggle_help(target: Path, exc: BaseException) -> str:
    return (
        f"could not download the Kaggle ALL dataset with kagglehub ({type(exc).__name__}: {exc}).\n"
        "Either set up Kaggle credentials: create an API token on https://www.kaggle.com/settings "
        '("Create New Token"), save kaggle.json as ~/.kaggle/kaggle.json (chmod 600) or export '
        "KAGGLE_USERNAME and KAGGLE_KEY, then run the command again;\nor download it by hand from "
        f"{REGISTRY['all'].page} (Download button), unzip it and put its Original/ and Segmented/ "
        f"folders in {target}/ (so that {target}/Original/Benign/ exists)."
    )


def _check_cache_links(cache: Path) -> None:
    """Refuse a kagglehub cache holding a symbolic link that points outside it, nowhere, or back up
    to a folder above it (a loop): the dataset would otherwise depend on (or expose) other files."""
    for folder, dirs, files in os.walk(cache):
        for name in dirs + files:
            path = Path(folder) / name
            if not path.is_symlink():
                continue
            real = os.path.realpath(path)
            inside = real == str(cache) or real.startswith(str(cache) + os.sep)
            loop = os.path.isdir(real) and (str(path) + os.sep).startswith(real + os.sep)
            if not inside or not os.path.exists(real) or loop:
                where = (
                    "points nowhere"
                    if not os.path.exists(real)
                    else f"points outside it, to {real}"
                    if not inside
                    else "points to a folder above it"
                )
                raise DownloadError(
                    f"the Kaggle download holds a symbolic link {display_path(path)} that "
                    f"{where} (cache {cache}); refusing to copy it. Delete the kagglehub "
                    "cache and download again, or put the folders in place by hand."
                )


def _link_or_copy(src: str, dst: str) -> None:
    """Hard-link ``src`` (its target, when it is a link) at ``dst``; copy where links are impossible."""
    try:
        os.link(os.path.realpath(src), dst)
    except OSError:
        shutil.copy2(src, dst)


def download_all(data_dir: str | os.PathLike, *, verify_all: bool = False, progress: bool = True) -> DownloadResult:
    """Fetch Kaggle ``mehradaria/leukemia`` with kagglehub into ``DATA_DIR/ALL_Kaggle/``: the files
    are hard-linked (or copied) from its cache, links resolved into real files."""
    info = REGISTRY["all"]
    data_dir = _data_dir(data_dir)
    target = data_dir / info.target
    if target.exists():
        return _existing(info, target, verify_all)
    try:
        import kagglehub

        source = Path(kagglehub.dataset_download(info.urls["kaggle"]))
    except Exception as exc:  # no credentials, no network, API change: all need the same help
        raise DownloadError(_kaggle_help(target, exc)) from exc
    wanted = {v.casefold(): v for v in ALL_VERSIONS}
    root = _find_dir(source, lambda d: wanted.keys() <= {c.name.casefold() for c in d.iterdir() if c.is_dir()})
    if root is None:
        raise LayoutError(
            f"kagglehub returned {source}, which holds no Original/ and Segmented/ folders "
            f"(top level: {sorted(p.name for p in source.iterdir())}). "
            + _kaggle_help(target, LayoutError("unexpected layout"))
        )
    cache = Path(os.path.realpath(source))
    _check_cache_links(cache)
    tmp = temporary_sibling(target, "copy")
    try:
        classes = {c.casefold(): c for c in ALL_CLASSES}
        for child in sorted(p for p in root.iterdir() if p.is_dir() and p.name.casefold() in wanted):
            version = tmp / wanted[child.name.casefold()]
            shutil.copytree(child, version, copy_function=_link_or_copy)
            for folder in [p for p in version.iterdir() if p.name.casefold() in classes]:
                folder.rename(version / classes[folder.name.casefold()])
        report = verify_folder(tmp, info.counts, "ALL", suffixes=info.suffixes, verify_all=verify_all)
        if not report.usable:
            raise LayoutError(
                f"the Kaggle download in {root} is incomplete or damaged; nothing was put in place.\n{report.summary()}"
            )
        os.replace(tmp, target)
        report.root = target
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return DownloadResult(
        info.key, target, "downloaded", report, [f"files linked (or copied) from the kagglehub cache {root}"]
    )


def download_bloodmnist(
    data_dir: str | os.PathLike, *, size: int = 28, url: str | None = None, progress: bool = True
) -> DownloadResult:
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
        raise LayoutError(f"{dest} matches its MD5 but not the expected arrays:\n" + report.summary())
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
     so that {target / "BAS"} exists
     (the archive may wrap them in one or two extra folders).
  4. Verify it:  python -m wbc download lmu --data-dir {Path(data_dir)} [--verify-all]"""


def download_lmu(data_dir: str | os.PathLike, *, verify_all: bool = False) -> DownloadResult:
    """Verify ``DATA_DIR/AML-Cytomorphology_LMU`` (downloaded by hand: ``lmu_instructions``)."""
    data_dir = _data_dir(data_dir, create=False)
    target = data_dir / LMU_DIRNAME
    if not target.is_dir():
        raise DownloadError(
            f"{target} not found: download the collection as described in "
            "lmu_instructions (python -m wbc download lmu prints it), put it there and "
            "run the command again to verify it"
        )
    return DownloadResult("lmu", target, "verified", verify_lmu(target, verify_all=verify_all))


DOWNLOADERS: dict[str, Callable[..., DownloadResult]] = {
    "pbc": download_pbc,
    "all": download_all,
    "bloodmnist": download_bloodmnist,
    "lmu": download_lmu,
}


def download_dataset(name: str, data_dir: str | os.PathLike, **options) -> DownloadResult:
    """Download (or, for ``lmu``, verify) dataset ``name`` into ``data_dir``; idempotent.

    ``options`` go to the dataset's function (``url``, ``verify_all``, ``progress``, ``size``,
    ``max_archive_bytes``, ``max_archive_entries``, as it accepts). A dataset already complete is
    verified, reported and left alone.
    """
    key = str(name).lower()
    if key not in DOWNLOADERS:
        raise WbcError(f"unknown dataset {name!r}: choose one of {', '.join(DOWNLOADERS)}")
    accepted = [p for p in inspect.signature(DOWNLOADERS[key]).parameters if p != "data_dir"]
    wrong = sorted(set(options) - set(accepted))
    if wrong:
        raise WbcError(f"option(s) {', '.join(wrong)} do not apply to {key}; it accepts {', '.join(accepted)}")
    return DOWNLOADERS[key](data_dir, **options)
