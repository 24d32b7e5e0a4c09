"""Finding the white cell and cropping around it (``wbc.cellcrop``, ``preprocess --crop-cell``)."""

from __future__ import annotations

import cv2
import numpy as np
import pandas as pd
import pytest

from wbc.cellcrop import NUCLEUS_SHARE, crop_box, find_cell
from wbc.errors import WbcError
from wbc.images import read_image
from wbc.preprocess import CROP_COLUMNS, NO_CELL, apply_preprocess_settings, preprocess_manifest

BACKGROUND = (232, 222, 206)  # RGB: a PBC-like smear background
RED_CELL = (222, 160, 168)
NUCLEUS = (110, 50, 140)


def smear(centre: tuple[int, int], radius: int, shape=(300, 400), seed: int = 0, lobes: int = 1) -> np.ndarray:
    """An RGB smear: red cells, and one white cell whose nucleus (``lobes`` touching-close discs, or
    one disc) spans ``2 * radius`` px around ``centre``; cytoplasm around it."""
    rng = np.random.default_rng(seed)
    img = np.full((*shape, 3), BACKGROUND, np.uint8)
    for _ in range(25):  # red cells everywhere, some under the white cell
        at = (int(rng.integers(0, shape[1])), int(rng.integers(0, shape[0])))
        cv2.circle(img, at, 22, RED_CELL, -1)
    cx, cy = centre
    cv2.circle(img, (cx, cy), int(radius * 1.4), (225, 200, 220), -1)  # cytoplasm
    if lobes == 1:
        cv2.circle(img, (cx, cy), radius, NUCLEUS, -1)
    else:  # lobes along a horizontal line, small gaps between them: one segmented nucleus
        r = radius // lobes
        for k in range(lobes):
            cv2.circle(img, (cx - radius + r + 2 * r * k, cy), r - 1, NUCLEUS, -1)
    noise = rng.normal(0, 4, img.shape)
    return np.clip(img + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize(
    "centre, radius",
    [((200, 150), 40), ((90, 70), 30), ((330, 230), 25), ((40, 260), 20)],  # centred, off-centre, near corners
)
def test_box_is_centred_on_the_cell_and_sized_by_it(centre, radius):
    box = find_cell(smear(centre, radius))
    assert box is not None
    x, y, side = box
    assert abs(x + side / 2 - centre[0]) <= 2 and abs(y + side / 2 - centre[1]) <= 2
    assert side == pytest.approx(2 * radius / NUCLEUS_SHARE, rel=0.06)


def test_lobes_of_one_nucleus_are_one_cell():
    x, y, side = find_cell(smear((200, 150), 45, lobes=3))
    assert abs(x + side / 2 - 200) <= 3 and side == pytest.approx(90 / NUCLEUS_SHARE, rel=0.08)


def test_crop_scales_cells_of_any_size_to_the_same_share():
    """Two cells, 2x apart in size and placed differently: after crop and resize the nucleus has the same size."""
    sizes = []
    for centre, radius in (((120, 100), 20), ((250, 180), 40)):
        img = smear(centre, radius)
        crop = cv2.resize(crop_box(img, find_cell(img), BACKGROUND), (128, 128), interpolation=cv2.INTER_AREA)
        nucleus = (crop[..., 2].astype(int) - crop[..., 1]) > 60
        sizes.append(nucleus.sum())
    assert sizes[0] == pytest.approx(sizes[1], rel=0.1)


def test_box_past_the_edge_is_filled_with_the_background():
    img = smear((30, 30), 25)
    x, y, side = find_cell(img)
    assert x < 0 and y < 0
    crop = crop_box(img, (x, y, side), BACKGROUND)
    assert crop.shape == (side, side, 3)
    assert tuple(crop[0, 0]) == BACKGROUND


@pytest.mark.parametrize(
    "image",
    [
        np.full((200, 200, 3), BACKGROUND, np.uint8),  # an empty field
        np.zeros((200, 200, 3), np.uint8),  # black
        np.full((200, 200, 3), RED_CELL, np.uint8),  # red cells only, no white cell
    ],
)
def test_no_cell_gives_none(image):
    assert find_cell(image) is None


def test_preprocess_records_the_box_and_quarantines_images_without_a_cell(tmp_path):
    paths = []
    for i, (centre, radius) in enumerate((((200, 150), 40), ((100, 80), 30))):
        paths.append(tmp_path / f"cell{i}.png")
        cv2.imwrite(str(paths[-1]), cv2.cvtColor(smear(centre, radius, seed=i), cv2.COLOR_RGB2BGR))
    paths.append(tmp_path / "empty.png")
    cv2.imwrite(str(paths[-1]), np.full((300, 400, 3), BACKGROUND[::-1], np.uint8))
    manifest = pd.DataFrame({"path": [str(p) for p in paths], "source": "PBC", "label": ["a", "b", "a"]})
    processed, quarantine = preprocess_manifest(manifest, tmp_path / "out", 64, crop_cell=True, jobs=1, progress=False)
    assert list(quarantine["path"]) == [str(paths[2])] and quarantine["reason"].iloc[0] == NO_CELL
    assert set(CROP_COLUMNS) <= set(processed.columns)
    for row, (cx, cy, r) in zip(processed.itertuples(), ((200, 150, 40), (100, 80, 30))):
        assert abs(row.crop_x + row.crop_size / 2 - cx) <= 2 and abs(row.crop_y + row.crop_size / 2 - cy) <= 2
        assert row.crop_size == pytest.approx(2 * r / NUCLEUS_SHARE, rel=0.06)
    on_disk = pd.read_csv(tmp_path / "out" / "manifest.csv")
    assert list(on_disk["crop_size"]) == list(processed["crop_size"])
    # the same folder without the crop is refused: its images were made otherwise
    with pytest.raises(WbcError, match="crop_cell True -> False"):
        preprocess_manifest(manifest, tmp_path / "out", 64, jobs=1, progress=False)


def test_predict_crops_as_the_run_did_and_names_an_image_without_a_cell():
    settings = {"size": 64, "mode": "stretch", "colour": None, "crop_cell": True}
    img = smear((100, 80), 30)
    out = apply_preprocess_settings(img, settings, "x.png")
    x, y, side = find_cell(img)
    expected = cv2.resize(crop_box(img, (x, y, side), BACKGROUND), (64, 64), interpolation=cv2.INTER_AREA)
    assert out.shape == (64, 64, 3) and np.abs(out.astype(int) - expected).mean() < 3
    with pytest.raises(WbcError, match="blank.png: no white cell"):
        apply_preprocess_settings(np.full((100, 100, 3), BACKGROUND, np.uint8), settings, "blank.png")


def test_real_images_crop_contains_the_nucleus(real_sample):
    """PBC and LMU centre the cell they are labelled by: the crop must contain the image centre
    and, after cropping, the nucleus must sit near the crop's centre, on nearly every image."""
    files = [
        p
        for folder in ("basophil", "eosinophil", "ig", "lymphocyte", "monocyte", "neutrophil")
        for p in sorted((real_sample / "PBC_dataset_normal_DIB" / folder).glob("[A-Z]*.jpg"))[::3]
    ] + sorted((real_sample / "AML-Cytomorphology_LMU").glob("*/*.tiff"))
    hits = []
    for path in files:
        img = read_image(path)
        box = find_cell(img)
        height, width = img.shape[:2]
        hits.append(
            box is not None and box[0] <= width / 2 <= box[0] + box[2] and box[1] <= height / 2 <= box[1] + box[2]
        )
    assert len(files) > 150
    assert np.mean(hits) >= 0.97, f"{np.mean(hits):.1%} of {len(files)} crops contain the cell"
