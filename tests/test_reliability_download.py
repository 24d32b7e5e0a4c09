"""Reliability of downloads against a loopback HTTP server (127.0.0.1 only) that misbehaves on
purpose, of archive extraction and of the verification."""

from __future__ import annotations

import hashlib
import io
import random
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from test_reliability_data import giant_png

from wbc.cli import main as cli_main
from wbc.download import PBC_COUNTS, REGISTRY, download_dataset, extract_archive, fetch_url, verify_folder
from wbc.errors import DownloadError

PAYLOAD = random.Random(1).randbytes(200_000)


def _handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            rng = self.headers.get("Range")
            state.requests.append(rng)
            data = state.files[path]
            if rng:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):  # past the end: 416, with or without the length
                    self.send_response(416)
                    if state.range_total_on_416:
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                if state.wrong_range:  # misbehaving: other bytes than asked for, labelled as such
                    start = min(len(data) - 1, start + 4_000)
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                body = data[start:]
            else:
                self.send_response(200)
                body = data
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server(loopback_server):
    state = SimpleNamespace(files={}, requests=[], wrong_range=False, range_total_on_416=True)
    return loopback_server(_handler(state), state)


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ----------------------------------------------------------------------------- resumes


@pytest.mark.parametrize("checksum", [True, False])
def test_resume_answered_with_a_wrong_content_range_restarts_from_zero(server, tmp_path, checksum):
    server.files["/f.bin"] = PAYLOAD
    server.wrong_range = True
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:50_000])  # a correct partial file
    fetch_url(server.url("/f.bin"), dest, expected_md5=md5(PAYLOAD) if checksum else None, progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == ["bytes=50000-", None]  # asked to resume, then started over
    assert not (tmp_path / "f.bin.part").exists()


@pytest.mark.parametrize("length_on_416", [True, False])
def test_partial_file_longer_than_the_remote_is_discarded_and_refetched(server, tmp_path, length_on_416):
    server.files["/f.bin"] = PAYLOAD
    server.range_total_on_416 = length_on_416
    dest = tmp_path / "f.bin"
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD + b"junk from an older, longer file")
    fetch_url(server.url("/f.bin"), dest, progress=False)  # no checksum to catch it
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[-1] is None


def test_complete_partial_file_is_not_fetched_again(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD)
    fetch_url(server.url("/f.bin"), tmp_path / "f.bin", progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD and server.requests == [f"bytes={len(PAYLOAD)}-"]


# ----------------------------------------------------------------------------- archives


def jpeg(value: int = 128) -> bytes:
    return cv2.imencode(".jpg", np.full((8, 8, 3), value, np.uint8))[1].tobytes()


def pbc_zip(extra: dict[str, bytes] | None = None, method=zipfile.ZIP_DEFLATED) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", method) as zf:
        for folder in PBC_COUNTS:
            for i in range(2):
                zf.writestr(f"PBC_dataset_normal_DIB/{folder}/{folder[:2].upper()}_{i}.jpg", jpeg(40 * i))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


def patch_member(archive: bytes, name: str, *, flags: int | None = None, method: int | None = None) -> bytes:
    """Rewrite a member's general-purpose flags or compression method in both of its headers."""
    data = bytearray(archive)
    local = zipfile.ZipFile(io.BytesIO(archive)).getinfo(name).header_offset
    central = data.index(b"PK\x01\x02")
    while True:  # walk the central directory to the member's entry
        name_len = int.from_bytes(data[central + 28 : central + 30], "little")
        if data[central + 46 : central + 46 + name_len] == name.encode():
            break
        central = data.index(b"PK\x01\x02", central + 4)
    if flags is not None:
        data[local + 6 : local + 8] = flags.to_bytes(2, "little")
        data[central + 8 : central + 10] = flags.to_bytes(2, "little")
    if method is not None:
        data[local + 8 : local + 10] = method.to_bytes(2, "little")
        data[central + 10 : central + 12] = method.to_bytes(2, "little")
    return bytes(data)


@pytest.fixture
def small_pbc(monkeypatch):
    monkeypatch.setitem(REGISTRY, "pbc", replace(REGISTRY["pbc"], counts=dict.fromkeys(PBC_COUNTS, 2)))


@pytest.mark.parametrize(
    "damage, message",
    [
        ({"flags": 0x1}, "is encrypted"),
        ({"method": 99}, "compression method 99"),
    ],
)
def test_encrypted_or_unsupported_member_is_a_clear_error(server, tmp_path, capsys, small_pbc, damage, message):
    name = "PBC_dataset_normal_DIB/basophil/BA_0.jpg"
    server.files["/pbc.zip"] = patch_member(pbc_zip(method=zipfile.ZIP_STORED), name, **damage)
    data = tmp_path / "data"
    code = cli_main(["download", "pbc", "--data-dir", str(data), "--url", server.url("/pbc.zip"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and name in err and "Traceback" not in err
    assert not (data / "PBC_dataset_normal_DIB").exists()
    assert not [p for p in data.iterdir() if ".extract-" in p.name]


def test_archive_size_and_entry_count_are_checked_before_extracting(server, tmp_path, capsys, small_pbc, monkeypatch):
    calls = []
    real = zipfile.ZipFile.extractall
    monkeypatch.setattr(zipfile.ZipFile, "extractall", lambda self, *a, **k: calls.append(1) or real(self, *a, **k))
    bomb = pbc_zip({"PBC_dataset_normal_DIB/basophil/zeros.bin": bytes(5_000_000)})
    assert len(bomb) < 100_000  # 5 MB of zeros compress to a few kilobytes
    server.files["/pbc.zip"] = bomb
    data = tmp_path / "data"
    url = ["--url", server.url("/pbc.zip"), "--no-progress", "--data-dir", str(data)]
    assert cli_main(["download", "pbc", *url, "--max-archive-gb", "0.001"]) == 2
    err = capsys.readouterr().err
    assert "unpacks to 5,0" in err and "more than the limit" in err and "--max-archive-gb" in err
    assert cli_main(["download", "pbc", *url, "--max-archive-entries", "5"]) == 2
    assert "entries, more than the limit of 5" in capsys.readouterr().err
    assert calls == [] and not (data / "PBC_dataset_normal_DIB").exists()
    assert cli_main(["download", "pbc", *url]) == 0  # within the default limits: extracted
    assert calls and (data / "PBC_dataset_normal_DIB" / "basophil" / "BA_0.jpg").is_file()
    with pytest.raises(DownloadError, match="entries, more than the limit"):  # settable in the library too
        extract_archive(
            data / ".downloads" / "PBC_dataset_normal_DIB.zip",
            tmp_path / "other" / "PBC_dataset_normal_DIB",
            REGISTRY["pbc"],
            max_entries=3,
        )


def test_cli_archive_limits_apply_to_pbc_only(tmp_path, capsys):
    assert cli_main(["download", "bloodmnist", "--data-dir", str(tmp_path), "--max-archive-entries", "3"]) == 2
    assert "apply to pbc only" in capsys.readouterr().err


# ----------------------------------------------------------------------------- verification


def test_verification_does_not_read_huge_files_or_decode_bombs(tmp_path, monkeypatch):
    folder = tmp_path / "set" / "cls"
    folder.mkdir(parents=True)
    (folder / "ok.png").write_bytes(cv2.imencode(".png", np.zeros((20, 20, 3), np.uint8))[1].tobytes())
    (folder / "bomb.png").write_bytes(giant_png(20000, 20000))
    with open(folder / "huge.png", "wb") as fh:  # a sparse 300 MB file: no disk used
        fh.truncate(300 * 1024**2)
    read = []
    real = np.fromfile
    monkeypatch.setattr(np, "fromfile", lambda path, *a, **k: read.append(Path(path).name) or real(path, *a, **k))
    report = verify_folder(tmp_path / "set", {"cls": 3}, "TEST", suffixes=(".png",), verify_all=True)
    reasons = dict((Path(p).name, why) for p, why in report.unreadable)
    assert read == ["ok.png"]  # only the good file was read into memory
    assert reasons["huge.png"].startswith("too large for an image file")
    assert reasons["bomb.png"].startswith("too large: 20000x20000 px")


def test_checksums_are_computed_in_chunks(server, tmp_path, monkeypatch):
    import wbc.fileio as fileio

    data = random.Random(2).randbytes(3 * 1024**2 + 5)
    dest = tmp_path / "big.bin"
    dest.write_bytes(data)
    sizes = []
    real_new = fileio.hashlib.new

    class Recording:
        def __init__(self, name):
            self.h = real_new(name)

        def update(self, block):
            sizes.append(len(block))
            self.h.update(block)

        def hexdigest(self):
            return self.h.hexdigest()

    monkeypatch.setattr(fileio.hashlib, "new", Recording)
    fetch_url(
        "http://127.0.0.1:9/unused",
        dest,
        expected_md5=md5(data),
        expected_sha256=hashlib.sha256(data).hexdigest(),
        progress=False,
    )  # an existing file is verified, not fetched
    assert len(sizes) >= 6 and max(sizes) <= 1024**2


# ----------------------------------------------------------------------------- Kaggle cache links


def kaggle_cache(root: Path) -> Path:
    for version in ("Original", "Segmented"):
        for cls in ("Benign", "Early", "Pre", "Pro"):
            folder = root / version / cls
            folder.mkdir(parents=True)
            for i in range(2):
                (folder / f"{cls}_{i}.jpg").write_bytes(jpeg(30 * i + 10))
    return root


@pytest.fixture
def small_all(monkeypatch):
    monkeypatch.setitem(REGISTRY, "all", replace(REGISTRY["all"], counts={k: 2 for k in REGISTRY["all"].counts}))


def fake_kagglehub(monkeypatch, cache: Path) -> None:
    import kagglehub

    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, **kw: str(cache))


def test_kaggle_links_inside_the_cache_become_real_files(tmp_path, monkeypatch, small_all):
    cache = kaggle_cache(tmp_path / "cache")
    blobs = tmp_path / "cache" / ".blobs"
    blobs.mkdir()
    (blobs / "b1").write_bytes(jpeg(200))
    target = cache / "Original" / "Pro" / "Pro_1.jpg"
    target.unlink()
    target.symlink_to(blobs / "b1")  # kagglehub-style: a link into its own blob store
    fake_kagglehub(monkeypatch, cache)
    result = download_dataset("all", tmp_path / "data", progress=False)
    placed = tmp_path / "data" / "ALL_Kaggle" / "Original" / "Pro" / "Pro_1.jpg"
    assert result.report.usable and placed.is_file() and not placed.is_symlink()
    assert placed.read_bytes() == jpeg(200)
    assert not any(p.is_symlink() for p in (tmp_path / "data").rglob("*"))


def test_kaggle_link_pointing_outside_the_cache_is_refused(tmp_path, monkeypatch, capsys, small_all):
    cache = kaggle_cache(tmp_path / "cache")
    secret = tmp_path / "elsewhere" / "private.jpg"
    secret.parent.mkdir()
    secret.write_bytes(jpeg(99))
    link = cache / "Segmented" / "Early" / "Early_0.jpg"
    link.unlink()
    link.symlink_to(secret)
    fake_kagglehub(monkeypatch, cache)
    data = tmp_path / "data"
    assert cli_main(["download", "all", "--data-dir", str(data), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "symbolic link" in err and "outside" in err and str(secret) in err
    assert not (data / "ALL_Kaggle").exists()
    assert not [p for p in data.iterdir() if ".copy-" in p.name]
    assert secret.stat().st_nlink == 1  # no hard link to it was made either
