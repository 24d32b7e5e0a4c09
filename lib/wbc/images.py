"""Image input/output at the bottom of the library: read, validate, decode, hash.

Everything that opens an image file goes through here (preprocess, split, readers, download
verification, eda, predict), so every stage refuses the same bad input with the same reasons:
the first bytes decide the format (``sniff_format``), the header's size is checked against the
pixel limit before any pixel is decoded, truncated JPEGs are caught, and any bit depth or channel
layout becomes RGB uint8. The perceptual hash and thumbnails used to find duplicates live here
too, since they are computed from decoded pixels.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import io
import os
import stat
import warnings
from collections.abc import Iterator

import cv2
import numpy as np

from wbc.errors import WbcError
from wbc.fileio import display_path

#: Largest image decoded (width x height), checked from the header first. 50 megapixels: a
#: 16-bit RGBA image that size takes 400 MB decoded, one worker's share of a laptop's memory;
#: the cell images are at most 400x400.
MAX_PIXELS = 50_000_000
#: Smallest side (px) of an image preprocess uses; smaller ones are quarantined, not upscaled.
MIN_SIZE = 16
#: A file larger than this is not read as an image at all (a cell image is kilobytes).
MAX_FILE_BYTES = 256 * 1024**2
TOO_LARGE_PREFIX = "too large"
TOO_SMALL_PREFIX = "too small"
#: File signatures: the first bytes decide the format, whatever the file name says.
SIGNATURES: tuple[tuple[bytes, str], ...] = (
    (b"\xff\xd8\xff", "JPEG"),
    (b"\x89PNG\r\n\x1a\n", "PNG"),
    (b"II*\x00", "TIFF"),
    (b"MM\x00*", "TIFF"),
    (b"II+\x00", "TIFF"),
    (b"MM\x00+", "TIFF"),
    (b"BM", "BMP"),
    (b"GIF87a", "GIF"),
    (b"GIF89a", "GIF"),
    (b"\x00\x00\x00\x01Bud1", "DS_STORE"),
)
#: Hamming distance (of 64 bits) up to which two perceptual hashes make a near-duplicate candidate.
PHASH_THRESHOLD = 4
#: ``pixel_distance`` below which a near-duplicate candidate is confirmed as one picture.
PIXEL_THRESHOLD = 0.4
#: Side of the thumbnails compared by ``pixel_distance``, and of the blocks it averages over.
THUMB_SIZE, THUMB_BLOCK = 32, 8
_MIN_STD = 16.0  # least divisor (gray levels) when normalising a thumbnail


class BadImageError(WbcError):
    """An input file that cannot be used as an image; ``reason`` says why (without the path)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        super().__init__(f"{display_path(path)}: {reason}")
        self.path = str(path)
        self.reason = reason


def sniff_format(data: bytes) -> str | None:
    """The format named by the first bytes (``"JPEG"``, ``"PNG"``, ``"TIFF"``, ..., ``"DS_STORE"``), else None."""
    data = bytes(data[:16])
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"  # the usual case, before the table
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((kind for magic, kind in SIGNATURES if data.startswith(magic)), None)


#: Pillow's plugin module for each sniffed format: importing it registers that one format, so a
#: header is parsed without Pillow trying (and first importing) every other plugin.
_PIL_PLUGINS = {
    "JPEG": "JpegImagePlugin",
    "PNG": "PngImagePlugin",
    "TIFF": "TiffImagePlugin",
    "BMP": "BmpImagePlugin",
    "GIF": "GifImagePlugin",
    "WEBP": "WebPImagePlugin",
}
#: JPEG frame-header markers (SOF0-SOF15 without DHT C4, JPG C8 and DAC CC): they carry the size.
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}


def jpeg_header_size(data: bytes | bytearray) -> tuple[int, int] | None:
    """``(width, height)`` from a JPEG's first frame header (SOFn), walking the marker segments
    before it as libjpeg does; None when they cannot be walked (Pillow then decides). A few
    microseconds: no Pillow object, no plugin lookup."""
    if data[:2] != b"\xff\xd8":
        return None
    pos, end = 2, len(data)
    while pos + 4 <= end:
        if data[pos] != 0xFF:
            return None  # garbage between segments: leave it to Pillow
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # TEM, RSTn: no length
            pos += 2
            continue
        if marker in (0xD8, 0xD9, 0xDA):  # SOI, EOI or scan data before any frame header
            return None
        length = (data[pos + 2] << 8) | data[pos + 3]
        if marker in _JPEG_SOF:
            if length < 8 or pos + 9 > end:
                return None
            height = (data[pos + 5] << 8) | data[pos + 6]
            width = (data[pos + 7] << 8) | data[pos + 8]
            return (width, height) if width and height else None  # height 0: DNL, Pillow decides
        if length < 2:
            return None
        pos += 2 + length
    return None


def header_size(source: bytes | str | os.PathLike, kind: str | None = None) -> tuple[int, int] | None:
    """``(width, height)`` from the image header only (no pixel decoded), from the bytes or the
    path; None when the header cannot be parsed (OpenCV then decides). ``kind``, the format
    ``sniff_format`` named, restricts the parse to that format: JPEG by ``jpeg_header_size``,
    others by that one Pillow plugin; where that fails every plugin is tried, as without ``kind``."""
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    if kind == "JPEG" and isinstance(source, (bytes, bytearray, memoryview)):
        size = jpeg_header_size(bytes(source) if isinstance(source, memoryview) else source)
        if size is not None:
            return size
    from PIL import Image

    def stream():
        return io.BytesIO(source) if is_bytes else open(source, "rb")

    plugin = _PIL_PLUGINS.get(kind) if kind is not None else None
    if kind is not None and plugin is not None:
        try:
            importlib.import_module(f"PIL.{plugin}")
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # DecompressionBombWarning: our own limit applies
                with stream() as fh, Image.open(fh, formats=[kind]) as im:
                    return int(im.size[0]), int(im.size[1])
        except Exception:
            pass  # not parsed as the sniffed format (or a bomb): the general path below decides
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning: our own limit applies
            with stream() as fh, Image.open(fh) as im:
                return int(im.size[0]), int(im.size[1])
    except Image.DecompressionBombError:
        pass  # over twice Pillow's own limit: read the true size with the format's parser
    except Exception:
        return None
    Image.init()
    with stream() as fh:
        prefix = fh.read(16)
        for fmt in Image.ID:
            factory, accept = Image.OPEN[fmt]
            if accept and not accept(prefix):
                continue
            try:
                fh.seek(0)
                im = factory(fh, "")  # a stream: "" as Image.open passes; its bomb check is not applied
                return int(im.size[0]), int(im.size[1])
            except Exception:
                continue
    return 2 * (Image.MAX_IMAGE_PIXELS or 0) + 1, 1  # Pillow said it is above this


def check_pixel_limit(width: int, height: int, path: str, max_pixels: int | None = MAX_PIXELS) -> None:
    """BadImageError when ``width x height`` exceeds ``max_pixels`` (None: no limit)."""
    if max_pixels is not None and width * height > max_pixels:
        raise BadImageError(
            path,
            f"{TOO_LARGE_PREFIX}: {width}x{height} px ({width * height / 1e6:.1f} "
            f"megapixels) is above the limit of {max_pixels / 1e6:g} megapixels "
            "(--max-pixels); not decoded",
        )


def check_min_size(width: int, height: int, path: str, min_size: int | None = MIN_SIZE) -> None:
    """BadImageError when a side is below ``min_size`` px (None: no minimum)."""
    if min_size is not None and min(width, height) < min_size:
        raise BadImageError(
            path,
            f"{TOO_SMALL_PREFIX}: {width}x{height} px, below the minimum of "
            f"{min_size} px a side (--min-size); not upscaled",
        )


def _jpeg_is_complete(data: bytes) -> bool:
    """True when a JPEG ends with its end-of-image marker (FF D9), or Pillow decodes it in full
    (some writers append bytes after the marker)."""
    if data[-64:].rstrip(b"\x00\r\n\t ").endswith(b"\xff\xd9"):
        return True
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
        return True
    except Exception:
        return False


def decode_raw(data: bytes, path: str | os.PathLike = "<bytes>", *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """Decode image bytes as stored (any dtype and channel count, OpenCV's BGR order); raise
    BadImageError with the reason. The header is checked against ``max_pixels`` first: a 20000 x
    20000 PNG of a few kilobytes is refused before it takes gigabytes."""
    path = display_path(path)
    if not len(data):
        raise BadImageError(path, "empty file (0 bytes)")
    kind = sniff_format(data)
    if kind is None:
        raise BadImageError(path, f"not an image (unrecognised content, first bytes {bytes(data[:8])!r})")
    if kind == "DS_STORE":
        raise BadImageError(path, "not an image (macOS .DS_Store metadata file)")
    size = header_size(data, kind)
    if size is not None:
        check_pixel_limit(*size, path, max_pixels)
    if kind == "JPEG" and not _jpeg_is_complete(data):
        raise BadImageError(path, "truncated JPEG (no end-of-image marker)")
    logging = cv2.utils.logging  # OpenCV's own log lines (libtiff/libpng complaints): we report errors
    level = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as exc:
        raise BadImageError(path, f"corrupt {kind} ({str(exc).strip().splitlines()[-1]})") from None
    finally:
        logging.setLogLevel(level)
    if img is None or img.size == 0:
        raise BadImageError(path, f"corrupt or truncated {kind} (OpenCV could not decode it)")
    return img


def to_bgr8(img: np.ndarray, path: str = "<bytes>") -> np.ndarray:
    """Any decoded array -> 3-channel BGR uint8: 16-bit scaled by 255/65535 with rounding (not
    truncated), floats in [0, 1] scaled to [0, 255], alpha dropped (the LMU TIFFs carry an opaque
    one), grayscale repeated on three channels."""
    if img.dtype == np.uint16:
        img = cv2.convertScaleAbs(img, alpha=255.0 / 65535.0)
    elif img.dtype in (np.float32, np.float64):
        scale = 255.0 if np.nanmax(img) <= 1.0 else 1.0
        img = np.clip(np.nan_to_num(img) * scale + 0.5, 0, 255).astype(np.uint8)
    elif img.dtype != np.uint8:
        raise BadImageError(path, f"unsupported pixel type {img.dtype}")
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels in (1, 2):  # grayscale (+ alpha)
        return cv2.cvtColor(np.ascontiguousarray(img if img.ndim == 2 else img[:, :, 0]), cv2.COLOR_GRAY2BGR)
    if channels == 3:
        return img
    if channels == 4:
        return cv2.cvtColor(img, cv2.COLOR_BGRA2BGR)
    raise BadImageError(path, f"unsupported number of channels ({channels})")


def decode_image(
    data: bytes, path: str | os.PathLike = "<bytes>", *, max_pixels: int | None = MAX_PIXELS
) -> np.ndarray:
    """Decode image bytes to BGR uint8 (OpenCV order); raise BadImageError with the reason."""
    return to_bgr8(decode_raw(data, path, max_pixels=max_pixels), display_path(path))


@contextlib.contextmanager
def _reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn the errors of reading ``path`` into BadImageErrors that say what is wrong."""
    try:
        yield
    except OSError as exc:
        raise _read_error(path, exc) from None


def _read_error(path: str | os.PathLike, exc: OSError) -> BadImageError:
    if isinstance(exc, FileNotFoundError):
        return BadImageError(path, "file not found (deleted or moved?)")
    if isinstance(exc, IsADirectoryError):
        return BadImageError(path, "is a folder, not an image file")
    if isinstance(exc, PermissionError):
        return BadImageError(path, "permission denied")
    return BadImageError(path, f"cannot read ({exc.strerror or exc})")


def read_bytes(path: str | os.PathLike) -> tuple[bytes, os.stat_result]:
    """The file's bytes and its stat (taken before reading: a file changed while read looks
    changed to a later stat), with clear errors for missing or unreadable files. Plain system
    calls (open, fstat, one read in the usual case), no buffered file object."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
            data = os.read(fd, st.st_size + 1)  # one byte more than the size: the end is seen
            if len(data) != st.st_size:  # grew, shrank, a short read or not a regular file
                parts = [data]
                while chunk := os.read(fd, 1 << 20):
                    parts.append(chunk)
                data = b"".join(parts)
            return data, st
        finally:
            os.close(fd)
    except OSError as exc:  # as _reading does, without a context manager per image
        raise _read_error(path, exc) from None


def read_raw(
    path: str | os.PathLike, *, max_pixels: int | None = MAX_PIXELS, max_bytes: int | None = MAX_FILE_BYTES
) -> np.ndarray:
    """An image file decoded as stored (see ``decode_raw``). A file above ``max_bytes``, or whose
    header announces more than ``max_pixels``, is refused before it is read."""
    with _reading(path):
        size = os.stat(path).st_size
        if max_bytes is not None and size > max_bytes:
            raise BadImageError(
                path, f"{TOO_LARGE_PREFIX} for an image file ({size:,} bytes; the limit is {max_bytes:,}); not read"
            )
        dims = header_size(path) if max_pixels is not None and os.path.isfile(path) else None
        if dims is not None:
            check_pixel_limit(*dims, display_path(path), max_pixels)
        data = np.fromfile(path, dtype=np.uint8).tobytes()
    return decode_raw(data, path, max_pixels=max_pixels)


def read_image(path: str | os.PathLike, *, max_pixels: int | None = MAX_PIXELS) -> np.ndarray:
    """An image file (JPEG, PNG, TIFF, BMP, GIF, WEBP) as RGB uint8 (H, W, 3); RGBA, 16-bit,
    grayscale and palette images handled. BadImageError (a WbcError) names the file and the
    reason: missing, empty, not an image, truncated, corrupt, too large."""
    bgr = to_bgr8(read_raw(path, max_pixels=max_pixels, max_bytes=None), display_path(path))
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# ----------------------------------------------------------------------------- hashes


def _shrink(gray: np.ndarray, size: int, stop: int) -> np.ndarray:
    """``gray`` at ``size`` x ``size``: halved by a Gaussian pyramid while its short side is at
    least ``stop``, then INTER_AREA (as smooth as INTER_AREA alone and several times faster)."""
    while min(gray.shape[:2]) >= stop:
        gray = cv2.pyrDown(gray)
    return cv2.resize(gray, (size, size), interpolation=cv2.INTER_AREA).astype(np.float32)


def _gray(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img if img.ndim == 2 else cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))


def phash_gray(gray: np.ndarray) -> str:
    """DCT perceptual hash of a grayscale uint8 image: 16 hex digits (64 bits). The 8x8 lowest
    frequencies of the 32x32 DCT are compared with their median, one bit each: coarse structure
    survives JPEG re-encoding, resizing and small brightness changes."""
    low = cv2.dct(_shrink(gray, 32, 128))[:8, :8].ravel()
    middle = np.partition(low, (31, 32))
    bits = low > (middle[31] + middle[32]) / 2  # the median, without np.median's overhead
    return f"{int.from_bytes(np.packbits(bits).tobytes(), 'big'):016x}"


def perceptual_hash(img: np.ndarray) -> str:
    """64-bit DCT perceptual hash (16 hex digits) of an RGB or grayscale uint8 image.

    Hashes within ``PHASH_THRESHOLD`` (4) bits are near-duplicate *candidates*; on the real
    sample a 128-px JPEG copy lies 0-4 bits from its original in 1,066 of 1,069 cases, distinct
    images at least 8 apart. The hash keeps only coarse structure, so look-alike cells on a smooth
    background (the demo cells) collide too: ``pixel_distance`` decides (bench/README.md)."""
    return phash_gray(_gray(img))


def thumbnail(img: np.ndarray, size: int = THUMB_SIZE) -> np.ndarray:
    """``size`` x ``size`` grayscale thumbnail (float32), mean subtracted and divided by its
    standard deviation (at least 16 gray levels, so an almost black image is not blown up)."""
    small = _shrink(_gray(img), size, 4 * size)
    small -= small.mean()
    return small / max(float(small.std()), _MIN_STD)


def thumbnail_distance(a: np.ndarray, b: np.ndarray, block: int = THUMB_BLOCK) -> float:
    """The largest mean absolute difference of two thumbnails over the ``block``-px squares that tile them."""
    if a.shape != b.shape or a.shape[0] % block or a.shape[1] % block:
        raise ValueError(f"thumbnails of shape {a.shape} and {b.shape} do not tile into {block}-px blocks")
    h, w = a.shape
    return float(np.abs(a - b).reshape(h // block, block, w // block, block).mean(axis=(1, 3)).max())


def pixel_distance(img_a: np.ndarray, img_b: np.ndarray) -> float:
    """How far apart two images are, pixel by pixel (0: the same picture); a candidate counts as
    one picture below ``PIXEL_THRESHOLD`` (0.4). The largest block difference catches a different
    nucleus that a mean over the whole image would dilute. Measured (bench/README.md): copies
    (brightness, half size, JPEG down to 64 px) lie at most 0.35 apart, different images at
    least 0.79 on the real sample and 0.43 on the demo data. Pictures differing only far below
    the thumbnail's scale (the demo's ALL Segmented fields) look the same to it."""
    return thumbnail_distance(thumbnail(img_a), thumbnail(img_b))


def hamming(a: str, b: str) -> int:
    """Number of differing bits between two hex hashes."""
    return bin(int(a, 16) ^ int(b, 16)).count("1")
