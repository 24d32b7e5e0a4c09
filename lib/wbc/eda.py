"""Exploratory figures and tables for raw manifests (notebooks 03 and 04).

Every ``plot_*`` function builds a :class:`matplotlib.figure.Figure` with a title, axis labels and
class names and returns it (it displays itself as a notebook cell's result). Tables are plain
DataFrames. Images are sampled per group with a seed, so figures are reproducible and cheap on
the full datasets; images that cannot be read are listed, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import numpy as np
import pandas as pd
from matplotlib.container import BarContainer
from matplotlib.figure import Figure

from wbc.errors import WbcError
from wbc.images import read_image

CHANNELS = ("red", "green", "blue")


def class_counts(manifest: pd.DataFrame, by: str = "source", label: str = "label") -> pd.DataFrame:
    """Images per class (rows) and per ``by`` value (columns), with a ``total`` row and column."""
    table = pd.crosstab(manifest[label], manifest[by], margins=True, margins_name="total")
    return table.rename_axis(index=label, columns=by)


def sample_groups(
    manifest: pd.DataFrame, n: int, by: Sequence[str] = ("label", "source"), seed: int = 0
) -> pd.DataFrame:
    """Up to ``n`` rows per group (sampled with ``seed``), groups in sorted order."""
    parts = [grp.sample(min(n, len(grp)), random_state=seed) for _, grp in manifest.groupby(list(by), sort=True)]
    return pd.concat(parts, ignore_index=True) if parts else manifest.head(0)


def class_order(names: Sequence[str]) -> list[str]:
    """``names`` in the course's class order: Study A's Table I order for the ten classes
    (``labels.WBC10_CLASSES``), Study B's for the ALL classes, other names sorted after them."""
    from wbc.labels import ALL_CLASSES, WBC10_CLASSES

    names = [str(n) for n in names]
    known = [c for c in (*WBC10_CLASSES, *ALL_CLASSES) if c in names]
    return known + sorted(set(names) - set(known))


def plot_class_distribution(
    manifest: pd.DataFrame, by: str = "source", label: str = "label", title: str = "Images per class"
) -> Figure:
    """Grouped horizontal bars: images per class, one colour per ``by`` value (source or version).

    Classes run top to bottom in the order of the published tables (:func:`class_order`); the
    legend sits outside the plot, right of the bars, so it never hides one.
    """
    counts = class_counts(manifest, by, label).drop(index="total", columns="total")
    counts = counts.reindex(class_order(counts.index))
    fig = Figure(figsize=(9, 0.45 * len(counts) + 1.5), layout="constrained")
    ax = fig.subplots()
    counts.plot.barh(ax=ax, width=0.8)
    ax.invert_yaxis()
    ax.set(title=title, xlabel="images", ylabel="class")
    ax.legend(title=by, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)
    ax.margins(x=0.08)  # room for the count written after the longest bar
    for container in ax.containers:  # barh's bars: BarContainer each (typed as Container)
        ax.bar_label(cast(BarContainer, container), fontsize=7, padding=2)
    return fig


def plot_preview_grid(
    manifest: pd.DataFrame,
    per_group: int = 3,
    by: str = "source",
    label: str = "label",
    seed: int = 0,
    title: str = "Examples per class",
) -> Figure:
    """One row per class, ``per_group`` images of each ``by`` value side by side, captioned."""
    sample = sample_groups(manifest, per_group, (label, by), seed)
    classes = class_order(sample[label].unique())
    groups = sorted(sample[by].unique())
    ncols = per_group * len(groups)
    fig = Figure(figsize=(1.4 * ncols + 1.5, 1.45 * len(classes) + 0.5), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(classes), ncols, squeeze=False))
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
        ax.spines[:].set_visible(False)
    for r, cls in enumerate(classes):
        for g, group in enumerate(groups):
            rows = sample[(sample[label] == cls) & (sample[by] == group)]
            for k, path in enumerate(rows["path"]):
                ax = axes[r, g * per_group + k]
                ax.imshow(read_image(path))
                ax.set_title(f"{group}", fontsize=7)
        axes[r, 0].set_ylabel(cls, rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(title)
    return fig


def image_stats(
    manifest: pd.DataFrame, per_group: int | None = 40, by: str = "source", label: str = "label", seed: int = 0
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Per-image raw size, channels, bit depth, mean brightness and mean R/G/B, on a sample.

    Returns ``(stats, unreadable)``; ``unreadable`` lists ``path, reason`` of files that failed.
    ``per_group=None`` measures every image.
    """
    import cv2
    from tqdm.auto import tqdm

    from wbc.images import read_raw, to_bgr8

    rows = manifest if per_group is None else sample_groups(manifest, per_group, (label, by), seed)
    stats, failed = [], []
    for row in tqdm(rows.itertuples(index=False), total=len(rows), desc="measuring images"):
        record = row._asdict()
        try:
            raw = read_raw(record["path"])
            rgb = cv2.cvtColor(to_bgr8(raw), cv2.COLOR_BGR2RGB).astype(np.float32)
        except WbcError as exc:
            failed.append({"path": record["path"], "reason": str(exc)})
            continue
        means = rgb.reshape(-1, 3).mean(axis=0)
        stats.append(
            {
                "path": record["path"],
                by: record[by],
                label: record[label],
                "width": raw.shape[1],
                "height": raw.shape[0],
                "channels": 1 if raw.ndim == 2 else raw.shape[2],
                "dtype": str(raw.dtype),
                "brightness": float(rgb.mean()),
                "mean_red": means[0],
                "mean_green": means[1],
                "mean_blue": means[2],
            }
        )
    return pd.DataFrame(stats), pd.DataFrame(failed, columns=["path", "reason"])


def image_size_table(stats: pd.DataFrame, by: str = "source") -> pd.DataFrame:
    """How many measured images have each (raw width, height, channels, dtype), per ``by`` value."""
    keys = [by, "width", "height", "channels", "dtype"]
    return stats.groupby(keys).size().rename("images").reset_index()


def plot_brightness_histograms(
    stats: pd.DataFrame, by: str = "source", bins: int = 30, title: str = "Mean brightness per image"
) -> Figure:
    """Overlaid histograms of per-image mean brightness (0-255), one per ``by`` value."""
    fig = Figure(figsize=(8, 4), layout="constrained")
    ax = fig.subplots()
    for group, part in stats.groupby(by):
        ax.hist(part["brightness"], bins=bins, range=(0, 255), alpha=0.5, label=f"{group} (n={len(part)})")
    ax.set(title=title, xlabel="mean pixel value (0 = black, 255 = white)", ylabel="images")
    ax.legend(title=by)
    return fig


def colour_histograms(
    manifest: pd.DataFrame, by: str = "source", per_group: int = 20, bins: int = 32, seed: int = 0
) -> pd.DataFrame:
    """Pixel histograms per ``by`` value and channel (fraction of pixels per bin), on a sample."""
    sample = sample_groups(manifest, per_group, (by,), seed)
    edges = np.linspace(0, 256, bins + 1)
    rows = []
    for group, part in sample.groupby(by):
        totals = np.zeros((3, bins))
        for path in part["path"]:
            pixels = read_image(path).reshape(-1, 3)
            totals += [np.histogram(pixels[:, c], bins=edges)[0] for c in range(3)]
        totals /= totals.sum(axis=1, keepdims=True)
        for c, channel in enumerate(CHANNELS):
            rows += [
                {by: group, "channel": channel, "bin_start": edges[i], "fraction": totals[c, i]} for i in range(bins)
            ]
    return pd.DataFrame(rows)


def plot_colour_histograms(hist: pd.DataFrame, by: str = "source", title: str = "Pixel colour distribution") -> Figure:
    """One panel per ``by`` value with the red, green and blue pixel histograms."""
    groups = sorted(hist[by].unique())
    fig = Figure(figsize=(4 * len(groups), 3.6), layout="constrained")  # room for the suptitle
    axes = np.atleast_1d(fig.subplots(1, len(groups), sharey=True, squeeze=False)[0])
    for ax, group in zip(axes, groups):
        for channel in CHANNELS:
            part = hist[(hist[by] == group) & (hist["channel"] == channel)]
            ax.plot(part["bin_start"], part["fraction"], color=channel, label=channel)
        ax.set(title=str(group), xlabel="pixel value", xlim=(0, 256))
    axes[0].set_ylabel("fraction of pixels")
    axes[0].legend()
    fig.suptitle(title)
    return fig


def duplicate_table(manifest: pd.DataFrame) -> pd.DataFrame:
    """Images whose bytes are identical to another image's (same SHA-256), one row per image.

    The ``labels`` column shows when one image carries two labels. Near duplicates (re-encoded
    or resized copies) need perceptual hashes: ``wbc.split.duplicate_groups`` finds those.
    """
    from tqdm.auto import tqdm

    from wbc.fileio import file_digest

    digests = [file_digest(p) for p in tqdm(manifest["path"], desc="hashing", unit="img")]
    hashed = manifest.assign(sha256=digests)
    dup = hashed[hashed.duplicated("sha256", keep=False)].copy()
    dup["labels"] = dup.groupby("sha256")["label"].transform(lambda s: " / ".join(sorted(set(s))))
    columns = ["sha256", "source", "label", "labels", "path"]
    return dup.sort_values(["sha256", "path"])[columns].reset_index(drop=True)
