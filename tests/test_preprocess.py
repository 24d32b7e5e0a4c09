"""OpenCV preprocessing: reading every input kind, resizing, black bands, colour, the stage."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest

from wbc.cli import main as cli_main
from wbc.errors import WbcError
from wbc.fileio import file_digest
from wbc.preprocess import (
    ADDED_COLUMNS,
    describe_black_band,
    detect_black_band,
    normalise_colour,
    preprocess_manifest,
    read_image,
    resize_image,
)

BACKGROUND = (232, 205, 214)  # RGB: the pale pink of a stained smear
NUCLEUS = (95, 45, 130)  # RGB: dark purple


def smear(h: int = 120, w: int = 110, seed: int = 0) -> np.ndarray:
    """An RGB image that looks roughly like a smear: pale background, a few dark cells, noise."""
    rng = np.random.default_rng(seed)
    img = np.empty((h, w, 3), np.uint8)
    img[:] = BACKGROUND
    for _ in range(3):
        centre = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(img, centre, int(rng.integers(2, max(3, min(h, w) // 5))), NUCLEUS, -1)
    noise = rng.integers(-6, 7, img.shape)
    return np.clip(img.astype(int) + noise, 0, 255).astype(np.uint8)


def save(path: Path, rgb: np.ndarray, params: list[int] | None = None) -> Path:
    """Write an RGB (or grayscale / 4-channel) array with OpenCV, converting to its BGR order."""
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = rgb
    if rgb.ndim == 3 and rgb.shape[2] == 3:
        arr = cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)
    elif rgb.ndim == 3 and rgb.shape[2] == 4:
        arr = cv2.cvtColor(rgb, cv2.COLOR_RGBA2BGRA)
    assert cv2.imwrite(str(path), arr, params or [])
    return path


# ----------------------------------------------------------------------------- read_image


def test_read_jpeg_returns_rgb_in_the_right_channel_order(tmp_path):
    img = np.zeros((20, 30, 3), np.uint8)
    img[:] = (200, 30, 10)  # red-ish in RGB
    out = read_image(save(tmp_path / "red.png", img))
    assert out.shape == (20, 30, 3) and out.dtype == np.uint8
    assert tuple(out[0, 0]) == (200, 30, 10)


def test_read_rgba_drops_alpha(tmp_path):
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., :3] = (10, 120, 240)
    rgba[..., 3] = 77
    out = read_image(save(tmp_path / "rgba.tiff", rgba))
    assert out.shape == (10, 10, 3)
    assert tuple(out[3, 3]) == (10, 120, 240)


def test_read_16bit_tiff_scales_instead_of_truncating(tmp_path):
    values = np.array([0, 257, 32768, 65535], np.uint16)
    img16 = np.repeat(values[None, :, None], 3, axis=2)  # 1x4, three channels
    out = read_image(save(tmp_path / "deep.tiff", np.ascontiguousarray(img16)))
    assert out.dtype == np.uint8
    assert out[0, :, 0].tolist() == [0, 1, 128, 255]


def test_read_grayscale_and_palette_png_give_three_equal_channels(tmp_path):
    from PIL import Image

    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    out = read_image(save(tmp_path / "gray.png", gray))
    assert out.shape == (8, 8, 3)
    assert (out[..., 0] == gray).all() and (out[..., 1] == gray).all() and (out[..., 2] == gray).all()

    rgb = smear(16, 16)
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16).save(tmp_path / "pal.png")
    pal = read_image(tmp_path / "pal.png")
    expected = np.asarray(Image.open(tmp_path / "pal.png").convert("RGB"))
    assert (pal == expected).all()


@pytest.mark.parametrize(
    "content, reason",
    [
        (b"", "empty file"),
        (b"\x00\x00\x00\x01Bud1" + b"\x00" * 200, ".DS_Store"),
        (bytes(range(256)) * 4, "not an image"),
    ],
)
def test_unreadable_files_raise_with_path_and_reason(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(WbcError) as err:
        read_image(path)
    assert str(path) in str(err.value) and reason in str(err.value)


def test_truncated_jpeg_is_detected(tmp_path):
    data = cv2.imencode(".jpg", smear(200, 200))[1].tobytes()
    for cut in (2, 500, len(data) // 2):
        path = tmp_path / f"cut{cut}.jpg"
        path.write_bytes(data[:-cut])
        with pytest.raises(WbcError, match="truncated"):
            read_image(path)


def test_jpeg_with_bytes_after_the_end_marker_still_reads(tmp_path):
    data = cv2.imencode(".jpg", smear(40, 40))[1].tobytes() + b"trailing-metadata"
    (tmp_path / "tail.jpg").write_bytes(data)
    assert read_image(tmp_path / "tail.jpg").shape == (40, 40, 3)


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(WbcError, match="not found"):
        read_image(tmp_path / "nope.jpg")


# ----------------------------------------------------------------------------- resize


def test_resize_modes_give_the_requested_size():
    img = smear(90, 150)
    for mode in ("stretch", "pad", "crop"):
        assert resize_image(img, 64, mode).shape == (64, 64, 3)
    assert resize_image(img, (50, 30)).shape == (30, 50, 3)  # (width, height)


def test_resize_uses_area_when_shrinking_and_cubic_when_enlarging():
    img = smear(100, 100)
    assert (resize_image(img, 40) == cv2.resize(img, (40, 40), interpolation=cv2.INTER_AREA)).all()
    assert (resize_image(img, 160) == cv2.resize(img, (160, 160), interpolation=cv2.INTER_CUBIC)).all()


def test_pad_keeps_aspect_and_fills_with_the_border_colour():
    img = np.zeros((50, 100, 3), np.uint8)
    img[:] = (200, 100, 50)
    img[20:30, 40:60] = (0, 0, 0)
    out = resize_image(img, 100, "pad")
    assert tuple(out[0, 0]) == (200, 100, 50) and tuple(out[-1, -1]) == (200, 100, 50)
    assert out[25:75].min() == 0  # the content band sits in the middle rows, unstretched
    assert tuple(resize_image(img, 100, "pad", background=(1, 2, 3))[0, 0]) == (1, 2, 3)


def test_crop_takes_the_centre():
    img = np.zeros((100, 200, 3), np.uint8)
    img[:, 50:150] = 255
    out = resize_image(img, 100, "crop")
    assert out.min() == 255


def test_bad_resize_mode_is_a_user_error():
    with pytest.raises(WbcError, match="resize mode"):
        resize_image(smear(), 32, "zoom")


# ----------------------------------------------------------------------------- black bands


def with_band(img: np.ndarray, edge: str, width: int) -> np.ndarray:
    out = img.copy()
    if edge == "top":
        out[:width] = 0
    elif edge == "bottom":
        out[-width:] = 0
    elif edge == "left":
        out[:, :width] = 0
    else:
        out[:, -width:] = 0
    return out


@pytest.mark.parametrize("edge", ["top", "bottom", "left", "right"])
@pytest.mark.parametrize("width", [1, 5, 20, 60])
def test_black_band_found_on_every_edge_and_width(edge, width):
    band = detect_black_band(with_band(smear(400, 400, seed=width), edge, width))
    assert band is not None
    assert (band["edge"], band["width"]) == (edge, width)
    assert describe_black_band(band) == f"black band: {edge} {width} px"


@pytest.mark.parametrize("edge", ["top", "right"])
def test_black_band_survives_jpeg_compression(edge):
    img = with_band(smear(400, 400), edge, 23)
    decoded = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])[1], cv2.IMREAD_COLOR)
    band = detect_black_band(decoded)
    assert band is not None and band["edge"] == edge and abs(band["width"] - 23) <= 2


def test_no_band_on_dark_cells_vignetting_blobs_or_segmented_backgrounds():
    base = smear(400, 400)
    dark_cell = base.copy()
    cv2.circle(dark_cell, (0, 200), 120, (40, 18, 60), -1)  # a dark-stained cell cut by the edge
    assert detect_black_band(dark_cell) is None

    yy, xx = np.mgrid[:400, :400]
    falloff = 1 - np.clip(np.hypot(yy - 200, xx - 200) / 283, 0, 1) ** 3  # black only in the corners
    assert detect_black_band((base * falloff[..., None]).astype(np.uint8)) is None

    blob = base.copy()
    blob[0:15, 100:130] = 0  # a small black speck on the edge
    assert detect_black_band(blob) is None

    segmented = np.zeros((224, 224, 3), np.uint8)  # black background, cells cut out of it
    cv2.circle(segmented, (60, 80), 40, (230, 120, 200), -1)
    cv2.circle(segmented, (170, 150), 45, (230, 120, 200), -1)
    assert detect_black_band(segmented) is None


def test_entirely_black_image_is_flagged():
    band = detect_black_band(np.zeros((30, 30, 3), np.uint8))
    assert band["edge"] == "all"
    assert "entirely black" in describe_black_band(band)


def test_no_real_sample_image_is_flagged(real_sample):
    files = sorted(p for p in real_sample.rglob("*") if p.suffix in (".jpg", ".tiff") and not p.name.startswith("."))
    assert len(files) > 1000
    flagged = [str(p) for p in files if detect_black_band(read_image(p)) is not None]
    assert flagged == []


# ----------------------------------------------------------------------------- colour


def test_colour_normalisation_is_off_by_default_and_grey_world_balances_channels():
    img = smear()
    assert normalise_colour(img) is img
    balanced = normalise_colour(img, "grey_world")
    means = balanced.reshape(-1, 3).mean(axis=0)
    assert means.max() - means.min() < 1.5
    assert np.ptp(img.reshape(-1, 3).mean(axis=0)) > 10  # the input was not balanced


def test_clahe_raises_contrast_of_a_flat_image():
    img = smear()
    flat = (img.astype(np.float32) * 0.3 + 120).astype(np.uint8)
    out = normalise_colour(flat, "clahe")
    assert out.shape == flat.shape and out.dtype == np.uint8
    assert out.std() > flat.std()
    with pytest.raises(WbcError):
        normalise_colour(img, "magic")


# ----------------------------------------------------------------------------- the stage


def make_manifest(root: Path, n: int = 6, labels=("alpha", "beta")) -> pd.DataFrame:
    rows = []
    for i in range(n):
        label = labels[i % len(labels)]
        path = save(root / label / f"img_{i}.jpg", smear(60 + i, 70, seed=i))
        rows.append({"path": str(path), "source": "PBC", "source_label": label, "sub_label": "", "label": label})
    return pd.DataFrame(rows)


def test_preprocess_writes_rgb_jpegs_and_the_processed_manifest(tmp_path):
    manifest = make_manifest(tmp_path / "raw")
    out = tmp_path / "out"
    processed, quarantine = preprocess_manifest(manifest, out, 32, jobs=1, progress=False)
    assert quarantine.empty and len(processed) == len(manifest)
    assert list(processed.columns) == list(manifest.columns) + list(ADDED_COLUMNS)
    for row in processed.itertuples():
        assert Path(row.path).parent == out / "images" / row.label
        img = read_image(row.path)
        assert img.shape == (32, 32, 3)
        raw = read_image(row.raw_path)
        assert np.abs(img.reshape(-1, 3).mean(0) - raw.reshape(-1, 3).mean(0)).max() < 6  # colours kept
        assert row.sha256 == file_digest(row.raw_path)
        assert len(row.phash) == 16 and int(row.phash, 16) >= 0
        assert (row.height, row.width) == raw.shape[:2]
    on_disk = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert on_disk["path"].tolist() == processed["path"].tolist()
    assert pd.read_csv(out / "quarantine.csv").empty
    assert processed.attrs["counts"] == {"processed": 6, "skipped": 0, "quarantined": 0, "black_band": 0}


def test_same_file_name_in_two_sources_gives_two_outputs(tmp_path):
    a = save(tmp_path / "A" / "cell.jpg", smear(seed=1))
    b = save(tmp_path / "B" / "cell.jpg", smear(seed=2))
    manifest = pd.DataFrame({"path": [str(a), str(b)], "source": ["PBC", "LMU"], "label": ["x", "x"]})
    processed, _ = preprocess_manifest(manifest, tmp_path / "out", 16, jobs=1, progress=False)
    assert processed["path"].nunique() == 2
    assert all(Path(p).is_file() for p in processed["path"])


def test_rerun_skips_finished_outputs_and_redoes_changed_sources(tmp_path):
    manifest = make_manifest(tmp_path / "raw")
    out = tmp_path / "out"
    first, _ = preprocess_manifest(manifest, out, 24, jobs=1, progress=False)
    again, _ = preprocess_manifest(manifest, out, 24, jobs=1, progress=False)
    assert again.attrs["counts"]["skipped"] == len(manifest) and again.attrs["counts"]["processed"] == 0
    pd.testing.assert_frame_equal(first, again)

    changed = Path(manifest.at[2, "path"])
    save(changed, smear(80, 80, seed=99))
    os.utime(changed, ns=(1, 1))  # a different mtime, whatever the clock resolution
    third, _ = preprocess_manifest(manifest, out, 24, jobs=1, progress=False)
    assert third.attrs["counts"] == {"processed": 1, "skipped": len(manifest) - 1, "quarantined": 0, "black_band": 0}
    assert third.at[2, "sha256"] == file_digest(changed) != first.at[2, "sha256"]

    with pytest.raises(WbcError, match="other settings"):  # other settings: refused ...
        preprocess_manifest(manifest, out, 20, jobs=1, progress=False)
    resized, _ = preprocess_manifest(manifest, out, 20, jobs=1, progress=False, overwrite=True)  # ... or redone
    assert resized.attrs["counts"]["processed"] == len(manifest)
    assert read_image(resized.at[0, "path"]).shape == (20, 20, 3)


def test_parallel_run_matches_serial_run(tmp_path):
    manifest = make_manifest(tmp_path / "raw", n=8)
    serial, _ = preprocess_manifest(manifest, tmp_path / "one", 24, jobs=1, progress=False)
    parallel, _ = preprocess_manifest(manifest, tmp_path / "two", 24, jobs=2, progress=False)
    for column in ("raw_path", "sha256", "phash", "width", "height", "label"):
        assert serial[column].tolist() == parallel[column].tolist()


def test_black_band_images_are_quarantined_unless_kept(tmp_path):
    manifest = make_manifest(tmp_path / "raw", n=3)
    save(Path(manifest.at[1, "path"]), with_band(smear(100, 100), "bottom", 23), [cv2.IMWRITE_PNG_COMPRESSION, 0])
    banded = tmp_path / "raw" / "banded.png"
    save(banded, with_band(smear(100, 100), "bottom", 23))
    manifest.loc[1, "path"] = str(banded)
    processed, quarantine = preprocess_manifest(manifest, tmp_path / "out", 16, jobs=1, progress=False)
    assert quarantine["path"].tolist() == [str(banded)]
    assert quarantine["reason"].tolist() == ["black band: bottom 23 px"]
    assert len(processed) == 2 and processed.attrs["counts"]["black_band"] == 1
    kept, q2 = preprocess_manifest(manifest, tmp_path / "kept", 16, jobs=1, progress=False, remove_black_band=False)
    assert len(kept) == 3 and q2.empty


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_modes_and_colour_options_run_through_the_stage(tmp_path, mode):
    manifest = make_manifest(tmp_path / "raw", n=2)
    processed, _ = preprocess_manifest(
        manifest, tmp_path / "out", 20, mode=mode, colour="grey_world", jobs=1, progress=False
    )
    assert all(read_image(p).shape == (20, 20, 3) for p in processed["path"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"size": 0}, "size"),
        ({"quality": 101}, "quality"),
        ({"mode": "zoom"}, "mode"),
        ({"jobs": 0}, "jobs"),
        ({"colour": "sepia"}, "colour"),
    ],
)
def test_bad_arguments_are_user_errors(tmp_path, kwargs, message):
    manifest = make_manifest(tmp_path / "raw", n=1)
    with pytest.raises(WbcError, match=message):
        preprocess_manifest(manifest, tmp_path / "out", progress=False, **kwargs)


def test_manifest_without_label_is_a_user_error(tmp_path):
    with pytest.raises(WbcError, match="label"):
        preprocess_manifest(pd.DataFrame({"path": ["x.jpg"]}), tmp_path / "out", progress=False)


def test_cli_preprocess_prints_counts(tmp_path, capsys):
    manifest = make_manifest(tmp_path / "raw", n=4)
    csv = tmp_path / "manifest.csv"
    manifest.to_csv(csv, index=False)
    args = ["preprocess", str(csv), "--out", str(tmp_path / "out"), "--size", "16", "--jobs", "1", "--no-progress"]
    assert cli_main(args) == 0
    assert "processed: 4  skipped (already done): 0  quarantined: 0  black-band removed: 0" in capsys.readouterr().out
    assert cli_main(args) == 0
    assert "processed: 0  skipped (already done): 4" in capsys.readouterr().out
    assert cli_main(["preprocess", str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o")]) == 2
    assert "manifest CSV not found" in capsys.readouterr().err


def test_settings_are_recorded_and_found_from_an_output_image(tmp_path):
    from wbc.preprocess import SETTINGS_FILE, preprocess_manifest, preprocess_settings

    raw = save(tmp_path / "raw" / "a.png", smear(80, 60))
    manifest = pd.DataFrame({"path": [str(raw)], "label": ["x"], "source": ["PBC"]})
    processed, _ = preprocess_manifest(
        manifest, tmp_path / "out", size=32, mode="pad", colour="clahe", jobs=1, progress=False
    )
    assert (tmp_path / "out" / SETTINGS_FILE).is_file()
    found = preprocess_settings(processed["path"].iloc[0])
    assert found["size"] == 32 and found["mode"] == "pad" and found["colour"] == "clahe"
    assert preprocess_settings(raw) is None  # a raw image was not written by a preprocess run


def test_apply_settings_repeats_colour_then_resize_mode():
    from wbc.preprocess import apply_preprocess_settings, resize_image

    img = smear(80, 60)
    settings = {"size": 32, "mode": "pad", "colour": "grey_world"}
    expected = resize_image(normalise_colour(img, "grey_world"), 32, "pad")
    assert np.array_equal(apply_preprocess_settings(img, settings), expected)
    assert apply_preprocess_settings(img, None) is img
