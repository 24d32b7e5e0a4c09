"""wbc.images fast paths: the JPEG frame-header parser and the plain-syscall file read agree with
the slower general paths they stand in for, and the pixel limit still refuses a JPEG bomb from its
header before any decoding."""

from __future__ import annotations

import io
import os

import cv2
import numpy as np
import pytest
from PIL import Image

import wbc.images as wi
from wbc.images import BadImageError, decode_raw, header_size, jpeg_header_size, read_bytes


def pillow_jpeg(width: int, height: int, mode: str = "RGB", **options) -> bytes:
    rng = np.random.default_rng(width * 31 + height)
    channels = {"L": 1, "RGB": 3, "CMYK": 4}[mode]
    pixels = rng.integers(0, 256, (height, width, channels), dtype=np.uint8)
    img = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, mode)
    buf = io.BytesIO()
    img.save(buf, "JPEG", **options)
    return buf.getvalue()


def pillow_size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as im:
        return im.size


def exif() -> bytes:
    tags = Image.Exif()
    tags[0x010F] = "camera"
    tags[0x0131] = "x" * 3000
    return tags.tobytes()


VARIANTS = {
    "baseline": dict(),
    "progressive": dict(progressive=True),
    "optimized": dict(optimize=True, quality=50),
    "4:4:4": dict(subsampling=0),
    "exif": dict(exif=exif()),
    "icc profile": dict(icc_profile=b"\0" * 70000),  # split over several APP2 segments
    "comment": dict(comment=b"a comment " * 100),
    "dpi": dict(dpi=(300, 300)),
}


@pytest.mark.parametrize("name", sorted(VARIANTS))
@pytest.mark.parametrize("mode", ["RGB", "L", "CMYK"])
def test_jpeg_header_size_agrees_with_pillow(name, mode):
    for width, height in ((1, 1), (17, 300), (360, 363), (1000, 7)):
        data = pillow_jpeg(width, height, mode, **VARIANTS[name])
        assert jpeg_header_size(data) == pillow_size(data) == (width, height)
        assert header_size(data, "JPEG") == header_size(data) == (width, height)


def test_jpeg_header_size_of_opencv_jpegs_with_restart_markers():
    img = np.random.default_rng(0).integers(0, 256, (123, 77, 3), dtype=np.uint8)
    for params in ([], [cv2.IMWRITE_JPEG_RST_INTERVAL, 1], [cv2.IMWRITE_JPEG_PROGRESSIVE, 1]):
        data = cv2.imencode(".jpg", img, params)[1].tobytes()
        assert jpeg_header_size(data) == (77, 123) == pillow_size(data)


def test_jpeg_header_size_gives_up_where_the_markers_cannot_be_walked():
    data = pillow_jpeg(40, 30)
    assert jpeg_header_size(b"") is None and jpeg_header_size(b"\xff\xd8") is None
    assert jpeg_header_size(data[:20]) is None  # cut before the frame header
    first = 4 + int.from_bytes(data[4:6], "big")  # after SOI and the first segment (APP0)
    junk = data[:first] + b"\x00\x00" + data[first:]  # bytes between segments: Pillow skips them
    assert jpeg_header_size(junk) is None
    assert header_size(junk, "JPEG") == pillow_size(junk) == (40, 30)  # the general path decides
    assert jpeg_header_size(b"\xff\xd8\xff\xda\x00\x08" + bytes(8)) is None  # scan before any frame


def with_frame_size(data: bytes, width: int, height: int) -> bytes:
    """``data`` with its first frame header (SOF0/SOF2) announcing ``width`` x ``height``."""
    pos = min(p for p in (data.find(b"\xff\xc0"), data.find(b"\xff\xc2")) if p > 0)
    return data[: pos + 5] + height.to_bytes(2, "big") + width.to_bytes(2, "big") + data[pos + 9 :]


def test_jpeg_bomb_is_refused_from_its_header_before_decoding(monkeypatch):
    bomb = with_frame_size(pillow_jpeg(64, 64), 60000, 60000)
    assert jpeg_header_size(bomb) == (60000, 60000)

    def no_decode(buf, flags):
        raise AssertionError("the JPEG announcing 60000x60000 px was handed to the decoder")

    monkeypatch.setattr(wi.cv2, "imdecode", no_decode)
    with pytest.raises(BadImageError, match=r"too large: 60000x60000 px"):
        decode_raw(bomb, "bomb.jpg")


def test_read_bytes_returns_the_bytes_and_stat_and_names_what_is_wrong(tmp_path):
    path = tmp_path / "a.bin"
    payload = os.urandom(100_003)
    path.write_bytes(payload)
    data, st = read_bytes(path)
    assert data == payload and st.st_size == len(payload) and st.st_mtime_ns == path.stat().st_mtime_ns
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert read_bytes(tmp_path / "empty.jpg")[0] == b""
    with pytest.raises(BadImageError, match="file not found"):
        read_bytes(tmp_path / "missing.jpg")
    with pytest.raises(BadImageError, match="is a folder"):
        read_bytes(tmp_path)
