"""Downloads without the internet: files served by a local HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import json
import random
import shutil
import zipfile
from dataclasses import replace
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest

from wbc import download
from wbc.cli import main as cli_main
from wbc.download import (
    LMU_COUNTS,
    PBC_COUNTS,
    REGISTRY,
    ChecksumError,
    download_dataset,
    fetch_url,
    npz_shapes,
    verify_lmu,
)
from wbc.errors import DownloadError, LayoutError, WbcError

PAYLOAD = random.Random(0).randbytes(300_000)


def _handler(state):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # keep test output clean
            pass

        def do_GET(self):
            path = self.path.split("?")[0]
            state.requests.append((path, self.headers.get("Range")))
            data = state.files.get(path)
            if data is None:
                self.send_error(404, "Not Found")
                return
            start, rng = 0, self.headers.get("Range")
            if rng and state.honour_range:
                start = int(rng.split("=")[1].split("-")[0])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:]
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if state.cut_after is not None:  # send part of the body, then drop the connection
                cut, state.cut_after = state.cut_after, None
                self.wfile.write(body[:cut])
                self.wfile.flush()
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


@pytest.fixture
def server(loopback_server):
    """A local file server: ``state.files[path] = bytes``; ``state.url(path)``."""
    state = SimpleNamespace(files={}, honour_range=True, cut_after=None, requests=[])
    return loopback_server(_handler(state), state)


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


# ------------------------------------------------------------------ fetch_url


def test_good_download_verifies(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    dest = fetch_url(
        server.url("/f.bin"),
        tmp_path / "f.bin",
        expected_md5=_md5(PAYLOAD),
        expected_sha256=hashlib.sha256(PAYLOAD).hexdigest(),
        chunk=4096,
        progress=False,
    )
    assert dest.read_bytes() == PAYLOAD
    assert not (tmp_path / "f.bin.part").exists()
    # an existing verified file is kept without a new request
    fetch_url(server.url("/f.bin"), dest, expected_md5=_md5(PAYLOAD), progress=False)
    assert len(server.requests) == 1


def test_wrong_checksum_fails_and_leaves_nothing_complete(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    url = server.url("/f.bin")
    with pytest.raises(ChecksumError) as err:
        fetch_url(url, tmp_path / "f.bin", expected_md5="0" * 32, progress=False)
    message = str(err.value)
    assert url in message and "0" * 32 in message and _md5(PAYLOAD) in message
    assert "again" in message
    assert list(tmp_path.iterdir()) == []


def test_interrupted_download_resumes_byte_identical(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.cut_after = 100_000
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        fetch_url(server.url("/f.bin"), dest, expected_md5=_md5(PAYLOAD), chunk=4096, progress=False)
    part = tmp_path / "f.bin.part"
    assert not dest.exists() and 0 < part.stat().st_size < len(PAYLOAD)
    have = part.stat().st_size
    fetch_url(server.url("/f.bin"), dest, expected_md5=_md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD and not part.exists()
    assert server.requests[-1][1] == f"bytes={have}-"


def test_existing_part_file_is_resumed(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:12345])
    dest = fetch_url(server.url("/f.bin"), tmp_path / "f.bin", expected_md5=_md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests == [("/f.bin", "bytes=12345-")]


def test_server_ignoring_range_restarts_cleanly(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    server.honour_range = False
    (tmp_path / "f.bin.part").write_bytes(b"stale bytes of another attempt")
    dest = fetch_url(server.url("/f.bin"), tmp_path / "f.bin", expected_md5=_md5(PAYLOAD), progress=False)
    assert dest.read_bytes() == PAYLOAD


def test_corrupt_part_file_is_deleted_then_download_succeeds(server, tmp_path):
    server.files["/f.bin"] = PAYLOAD
    (tmp_path / "f.bin.part").write_bytes(b"x" * 5000)  # wrong bytes: resume gives a bad file
    sha = hashlib.sha256(PAYLOAD).hexdigest()
    with pytest.raises(ChecksumError, match=sha):
        fetch_url(server.url("/f.bin"), tmp_path / "f.bin", expected_sha256=sha, progress=False)
    assert list(tmp_path.iterdir()) == []
    fetch_url(server.url("/f.bin"), tmp_path / "f.bin", expected_sha256=sha, progress=False)
    assert (tmp_path / "f.bin").read_bytes() == PAYLOAD


def test_http_error_is_clear(server, tmp_path):
    url = server.url("/missing.zip")
    with pytest.raises(DownloadError, match="404") as err:
        fetch_url(url, tmp_path / "m.zip", progress=False)
    assert url in str(err.value) and not (tmp_path / "m.zip").exists()


# ------------------------------------------------------------------ PBC archive


def _jpeg(value: int = 128) -> bytes:
    return cv2.imencode(".jpg", np.full((8, 8, 3), value, np.uint8))[1].tobytes()


def _pbc_zip(
    per_class: int = 2,
    prefix: str = "PBC_dataset_normal_DIB/",
    drop: str | None = None,
    extra: dict[str, bytes] | None = None,
) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for folder in PBC_COUNTS:
            if folder == drop:
                continue
            for i in range(per_class):
                zf.writestr(f"{prefix}{folder}/{folder[:2].upper()}_{i}.jpg", _jpeg(40 * i))
        zf.writestr(f"{prefix}neutrophil/.DS_169665.jpg", b"\x00\x05\x16\x07 macOS metadata")
        zf.writestr(f"__MACOSX/{prefix}._basophil", b"junk")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buf.getvalue()


@pytest.fixture
def small_pbc(monkeypatch):
    """Make the registry expect 2 images per PBC folder (the fake archives' size)."""
    small = replace(REGISTRY["pbc"], counts=dict.fromkeys(PBC_COUNTS, 2))
    monkeypatch.setitem(REGISTRY, "pbc", small)


def _leftovers(data_dir: Path) -> list[str]:
    return [p.name for p in data_dir.iterdir() if ".extract-" in p.name or ".copy-" in p.name]


def test_pbc_zip_is_fetched_extracted_and_recorded(server, tmp_path, small_pbc):
    archive = _pbc_zip()
    server.files["/pbc.zip"] = archive
    data = tmp_path / "data"
    result = download_dataset("pbc", data, url=server.url("/pbc.zip"), progress=False)
    target = data / "PBC_dataset_normal_DIB"
    assert result.status == "downloaded" and result.path == target
    assert sorted(p.name for p in target.iterdir()) == sorted(PBC_COUNTS)
    assert len(list((target / "basophil").glob("*.jpg"))) == 2
    assert result.report.complete
    assert any(".DS_169665.jpg" in path for path, _ in result.report.skipped)
    assert not (data / "__MACOSX").exists() and _leftovers(data) == []
    record = json.loads((data / ".wbc-downloads.json").read_text())["pbc"]
    assert record["sha256"] == hashlib.sha256(archive).hexdigest()
    # a second run reports and leaves the complete dataset alone
    again = download_dataset("pbc", data, url=server.url("/pbc.zip"), progress=False)
    assert again.status == "already present" and len(server.requests) == 1


def test_pbc_wrapper_folder_is_unwrapped(server, tmp_path, small_pbc):
    server.files["/pbc.zip"] = _pbc_zip(prefix="download/PBC_dataset_normal_DIB/")
    result = download_dataset("pbc", tmp_path, url=server.url("/pbc.zip"), progress=False)
    assert (tmp_path / "PBC_dataset_normal_DIB" / "platelet").is_dir()
    assert not (tmp_path / "download").exists() and result.report.usable


def test_pbc_counts_differ_from_release_not_recorded(server, tmp_path):
    server.files["/pbc.zip"] = _pbc_zip()
    result = download_dataset("pbc", tmp_path, url=server.url("/pbc.zip"), progress=False)
    assert result.report.usable and not result.report.complete
    assert result.report.differences()["neutrophil"] == (2, 3329)
    assert "differ" in result.summary() and not (tmp_path / ".wbc-downloads.json").exists()


def test_pbc_recorded_digest_is_enforced(server, tmp_path, small_pbc):
    server.files["/pbc.zip"] = _pbc_zip()
    download_dataset("pbc", tmp_path, url=server.url("/pbc.zip"), progress=False)
    (tmp_path / ".downloads" / "PBC_dataset_normal_DIB.zip").unlink()
    shutil.rmtree(tmp_path / "PBC_dataset_normal_DIB")
    server.files["/pbc.zip"] = _pbc_zip(per_class=3)  # another archive under the same address
    with pytest.raises(ChecksumError, match="recorded"):
        download_dataset("pbc", tmp_path, url=server.url("/pbc.zip"), progress=False)
    assert not (tmp_path / "PBC_dataset_normal_DIB").exists()


def test_zip_with_path_traversal_is_refused(server, tmp_path, small_pbc):
    server.files["/pbc.zip"] = _pbc_zip(extra={"../../evil.txt": b"owned"})
    data = tmp_path / "a" / "data"
    with pytest.raises(DownloadError, match="path traversal"):
        download_dataset("pbc", data, url=server.url("/pbc.zip"), progress=False)
    assert not list(tmp_path.rglob("evil.txt"))
    assert not (data / "PBC_dataset_normal_DIB").exists() and _leftovers(data) == []


def test_zip_missing_a_class_folder_is_refused(server, tmp_path, small_pbc):
    server.files["/pbc.zip"] = _pbc_zip(drop="platelet")
    with pytest.raises(LayoutError, match="platelet"):
        download_dataset("pbc", tmp_path, url=server.url("/pbc.zip"), progress=False)
    assert not (tmp_path / "PBC_dataset_normal_DIB").exists() and _leftovers(tmp_path) == []


def test_real_sample_pbc_is_reported_and_left_alone(real_sample):
    ig = real_sample / "PBC_dataset_normal_DIB" / "ig"
    before = sorted(p.name for p in ig.iterdir())
    result = download_dataset("pbc", real_sample, url="http://127.0.0.1:9/unused", progress=False)
    assert result.status == "already present" and result.report.usable
    assert result.report.differences()  # a sample, not the full release
    assert sorted(p.name for p in ig.iterdir()) == before


# ------------------------------------------------------------------ Kaggle ALL


def _kaggle_cache(root: Path, per_class: int = 2) -> Path:
    """A folder shaped like kagglehub's download (lower-case 'segmented' on purpose)."""
    for version in ("Original", "segmented"):
        for cls in ("Benign", "Early", "Pre", "Pro"):
            folder = root / "versions" / "1" / version / cls
            folder.mkdir(parents=True)
            for i in range(per_class):
                (folder / f"WBC-{cls}-{i:03d}.jpg").write_bytes(_jpeg(30 * i))
    return root


def test_kaggle_all_is_linked_into_place(tmp_path, monkeypatch):
    import kagglehub

    cache = _kaggle_cache(tmp_path / "cache")
    calls = []
    monkeypatch.setattr(kagglehub, "dataset_download", lambda handle, **kw: calls.append(handle) or str(cache))
    counts = {k: 2 for k in REGISTRY["all"].counts}
    monkeypatch.setitem(REGISTRY, "all", replace(REGISTRY["all"], counts=counts))
    data = tmp_path / "data"
    result = download_dataset("all", data, progress=False)
    target = data / "ALL_Kaggle"
    assert calls == ["mehradaria/leukemia"] and result.status == "downloaded"
    assert sorted(p.name for p in target.iterdir()) == ["Original", "Segmented"]
    assert len(list((target / "Segmented" / "Pro").glob("*.jpg"))) == 2
    assert result.report.complete and _leftovers(data) == []
    assert download_dataset("all", data).status == "already present" and len(calls) == 1


def test_kaggle_failure_explains_credentials_and_manual_route(tmp_path, monkeypatch):
    import kagglehub

    def fail(handle, **kw):
        raise RuntimeError("401 Unauthorized")

    monkeypatch.setattr(kagglehub, "dataset_download", fail)
    with pytest.raises(DownloadError) as err:
        download_dataset("all", tmp_path, progress=False)
    message = str(err.value)
    assert "kaggle.json" in message and "KAGGLE_USERNAME" in message
    assert str(tmp_path / "ALL_Kaggle") in message and "401" in message
    assert not (tmp_path / "ALL_Kaggle").exists()


# ------------------------------------------------------------------ BloodMNIST


def _fake_npz(size: int = 28) -> bytes:
    buf = io.BytesIO()
    arrays = {}
    for split, n in {"train": 5, "val": 2, "test": 3}.items():
        arrays[f"{split}_images"] = np.zeros((n, size, size, 3), np.uint8)
        arrays[f"{split}_labels"] = np.arange(n, dtype=np.uint8).reshape(n, 1)
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


def test_bloodmnist_md5_and_shapes(server, tmp_path, monkeypatch):
    npz = _fake_npz(64)
    server.files["/bloodmnist_64.npz"] = npz
    info = replace(REGISTRY["bloodmnist"], md5={64: _md5(npz)})
    monkeypatch.setitem(REGISTRY, "bloodmnist", info)
    monkeypatch.setattr(download, "BLOODMNIST_SPLITS", {"train": 5, "val": 2, "test": 3})
    result = download_dataset("bloodmnist", tmp_path, size=64, url=server.url("/bloodmnist_64.npz"), progress=False)
    assert result.path == tmp_path / "bloodmnist_64.npz" and result.report.complete
    assert npz_shapes(result.path)["val_images"] == (2, 64, 64, 3)
    again = download_dataset("bloodmnist", tmp_path, size=64, progress=False)
    assert again.status == "already present" and len(server.requests) == 1


def test_bloodmnist_published_md5_rejects_other_file(server, tmp_path):
    server.files["/bloodmnist.npz"] = _fake_npz()
    with pytest.raises(ChecksumError, match=REGISTRY["bloodmnist"].md5[28]):
        download_dataset("bloodmnist", tmp_path, url=server.url("/bloodmnist.npz"), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_bloodmnist_registry_has_published_md5s():
    info = REGISTRY["bloodmnist"]
    assert sorted(info.urls) == sorted(info.md5) == [28, 64, 128, 224]
    assert len(set(info.md5.values())) == 4  # one published digest per size, none copied twice
    assert all("zenodo.org/records/10519652/" in u for u in info.urls.values())


# ------------------------------------------------------------------ LMU


def _tiff(path: Path, channels: int = 4) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), np.full((6, 6, channels), 200, np.uint8))


def _lmu_folder(root: Path) -> Path:
    for code in LMU_COUNTS:
        for i in range(2):
            _tiff(root / code / f"{code}_{i:04d}.tiff")
    (root / "BAS" / "BAS_9999.tiff").write_bytes(b"not a tiff at all")
    _tiff(root / "EOS" / "EOS_0777.tiff", channels=3)
    return root


def test_verify_lmu_reports_counts_unreadable_and_channels(tmp_path):
    folder = _lmu_folder(tmp_path / "AML-Cytomorphology_LMU")
    report = verify_lmu(folder, verify_all=True)
    assert report.missing == [] and report.counts["BAS"] == 3 and report.counts["EOS"] == 3
    assert [Path(p).name for p, _ in report.unreadable] == ["BAS_9999.tiff"]
    assert report.decoded == 32 and not report.usable
    assert report.differences()["NGS"] == (2, 8484)
    assert any("do not have 4 channels" in n and "EOS_0777" in n for n in report.notes)


def test_verify_lmu_samples_by_default(tmp_path):
    folder = _lmu_folder(tmp_path / "lmu")
    report = verify_lmu(folder, sample=5)
    assert report.decoded == 5 and not report.checked_all


def test_verify_lmu_points_at_nested_class_folders(tmp_path):
    _lmu_folder(tmp_path / "AML-Cytomorphology_LMU" / "PKG - AML-Cytomorphology" / "AML-Cytomorphology")
    with pytest.raises(LayoutError, match="AML-Cytomorphology, not directly"):
        verify_lmu(tmp_path / "AML-Cytomorphology_LMU")


def test_verify_lmu_on_real_sample(real_sample):
    report = verify_lmu(real_sample / "AML-Cytomorphology_LMU")
    assert sorted(report.counts) == sorted(LMU_COUNTS) and report.usable
    assert set(report.differences()) == set(LMU_COUNTS)  # 4 per code, not the full release
    assert report.checked_all and any("(RGBA)" in n for n in report.notes)
    assert "NGS" in report.summary()


# ------------------------------------------------------------------ dispatch and CLI


def test_dispatch_rejects_unknown_dataset_and_options(tmp_path):
    with pytest.raises(WbcError, match="unknown dataset"):
        download_dataset("imagenet", tmp_path)
    with pytest.raises(WbcError, match="do not apply to lmu"):
        download_dataset("lmu", tmp_path, url="http://example.org/x.zip")


def test_cli_lmu_prints_route_and_verifies(tmp_path, capsys):
    _lmu_folder(tmp_path / "AML-Cytomorphology_LMU")
    (tmp_path / "AML-Cytomorphology_LMU" / "BAS" / "BAS_9999.tiff").unlink()
    assert cli_main(["download", "lmu", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "10.7937/tcia.2019.36f5o9ld" in out and "LMU at" in out and "8,484" in out


def test_cli_errors_exit_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("WBC_DATA_DIR", raising=False)
    assert cli_main(["download", "pbc"]) == 2
    assert "--data-dir" in capsys.readouterr().err
    assert cli_main(["download", "lmu", "--data-dir", str(tmp_path)]) == 2
    assert "AML-Cytomorphology_LMU not found" in capsys.readouterr().err
    assert cli_main(["download", "all", "--data-dir", str(tmp_path), "--url", "http://x"]) == 2
    assert cli_main(["download", "pbc", "--data-dir", str(tmp_path), "--size", "64"]) == 2


def test_incomplete_zip_without_checksum_is_not_accepted(server, tmp_path):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("PBC_dataset_normal_DIB/basophil/BA_1.jpg", PAYLOAD[:50_000])
    server.files["/pbc.zip"] = buf.getvalue()[:30_000]  # the server itself holds a cut archive
    with pytest.raises(DownloadError, match="not a complete zip archive"):
        fetch_url(server.url("/pbc.zip"), tmp_path / "pbc.zip", progress=False)
    assert not (tmp_path / "pbc.zip").exists()
    assert (tmp_path / "pbc.zip.part").exists()  # kept for a resume
