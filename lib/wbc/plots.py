"""Figures for training and evaluation: curves, confusion matrices, ROC curves, image galleries.

Every function builds a :class:`matplotlib.figure.Figure` directly (no pyplot state: works on
servers and piles up no windows), with a title, axis labels and class names, returns it (a
notebook displays it) and saves it as PNG when ``path`` is given. Confusion matrices and ROC
curves are scikit-learn's displays; ``save_figure`` is the one PNG writer (``Context.save_figure``).
"""

from __future__ import annotations

import math
import os
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.artist import Artist
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from wbc.errors import WbcError
from wbc.fileio import atomic_path

SAVE_DPI = 120
MAX_FIGURE_WIDTH = 13.0  # inches: 1,560 px at SAVE_DPI (plus the saved margin), about what a laptop screen shows


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = SAVE_DPI) -> Path:
    """Save ``fig`` as PNG at ``path`` atomically (parent folders created); returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return path


def legend_outside(fig: Figure, title: str | None = None, fontsize: float | None = None) -> Figure:
    """Replace the legends drawn inside ``fig``'s axes by one figure legend to the right of the
    panels, where it covers no data. Entries with the same label are shown once; ``title``
    defaults to the first axes legend's title. Returns ``fig``."""
    entries: dict[str, Artist] = {}
    old_title = None
    for ax in fig.axes:
        legend = ax.get_legend()
        if legend is not None:
            old_title = old_title or legend.get_title().get_text() or None
            legend.remove()
        for handle, label in zip(*ax.get_legend_handles_labels()):
            if not label.startswith("_"):
                entries.setdefault(label, handle)
    if entries:
        if fig.get_layout_engine() is None:
            fig.set_layout_engine("constrained")
        fig.legend(
            list(entries.values()),
            list(entries),
            title=title if title is not None else old_title,
            loc="outside right upper",
            fontsize=fontsize,
        )
    return fig


def _finish(fig: Figure, path: str | os.PathLike | None) -> Figure:
    if path is not None:
        save_figure(fig, path)
    return fig


def plot_history(
    history: pd.DataFrame, path: str | os.PathLike | None = None, title: str = "Training curves"
) -> Figure:
    """Loss and accuracy per epoch, training vs validation, from a run's ``history.csv``.

    When the table has a ``phase`` column (e.g. frozen base, then fine-tuning), a dashed line
    marks where each new phase starts. Epochs are numbered by row, so phases run on.
    """
    fig = Figure(figsize=(11, 4.2), layout="constrained")  # keeps the suptitle clear of the panel titles
    axes = fig.subplots(1, 2)
    epochs = np.arange(1, len(history) + 1)
    for ax, metric in zip(axes, ("loss", "accuracy")):
        for column, style, label in ((metric, "-o", "train"), (f"val_{metric}", "-s", "validation")):
            if column in history.columns:
                ax.plot(epochs, history[column], style, markersize=3, label=label)
        if "phase" in history.columns:
            phases = history["phase"].astype(str).to_numpy()
            for i in np.flatnonzero(phases[1:] != phases[:-1]) + 1:  # named in the legend, not over the curves
                ax.axvline(i + 0.5, color="grey", linestyle="--", linewidth=1, label=f"phase {phases[i]} starts")
        ax.set_title(metric.capitalize())
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # below the panel: never over the data
            ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3, frameon=False)
    fig.suptitle(title)
    return _finish(fig, path)


def annotation_fontsize(n_classes: int) -> float:
    """Font size (points) for the numbers written in the cells of an ``n_classes`` confusion matrix:
    11 up to ten classes, smaller as cells shrink, never below 7."""
    return float(max(7, min(11, 21 - n_classes)))


def plot_confusion_matrix(
    cm: np.ndarray,
    classes: Sequence[str],
    normalised: bool = False,
    path: str | os.PathLike | None = None,
    title: str | None = None,
) -> Figure:
    """Confusion matrix heat map (rows: true class, columns: predicted class), values written in:
    scikit-learn's ``ConfusionMatrixDisplay``."""
    from sklearn.metrics import ConfusionMatrixDisplay

    cm = np.asarray(cm)
    size = max(5.0, 0.6 * len(classes) + 2.5)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.subplots()
    display = ConfusionMatrixDisplay(cm, display_labels=list(classes)).plot(
        ax=ax,
        cmap="Blues",
        xticks_rotation=45,
        values_format=".2f" if normalised or cm.dtype.kind == "f" else "d",
        im_kw={"vmin": 0, "vmax": 1 if normalised else max(1, cm.max())},
        text_kw={"fontsize": annotation_fontsize(len(classes))},
    )
    display.im_.colorbar.set_label("share of true class" if normalised else "images")
    ax.set(
        xlabel="predicted class",
        ylabel="true class",
        title=title or f"Confusion matrix ({'normalised by true class' if normalised else 'counts'})",
    )
    return _finish(fig, path)


def plot_roc(
    y_true,
    probs,
    classes: Sequence[str],
    path: str | os.PathLike | None = None,
    title: str = "ROC curves (one class vs the rest)",
) -> Figure:
    """One-vs-rest ROC curve per class (scikit-learn's ``RocCurveDisplay``) plus the micro-average
    and the macro-average (mean of the per-class curves), AUC in the legend. Classes absent from
    ``y_true`` have no curve and are named in the legend as such."""
    from sklearn.metrics import RocCurveDisplay

    y, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    fig = Figure(figsize=(10, 6), layout="constrained")  # room for the legend beside the curves
    ax = fig.subplots()
    curves = []
    for i, name in enumerate(classes):
        if (y == i).any() and not (y == i).all():
            curves.append(
                RocCurveDisplay.from_predictions(
                    y == i, probs[:, i], name=str(name), ax=ax, curve_kwargs={"linewidth": 1.2}
                )
            )
        else:
            ax.plot([], [], " ", label=f"{name} (not in the true labels)")
    if curves:
        RocCurveDisplay.from_predictions(
            np.eye(len(classes), dtype=int)[y].ravel(),
            probs.ravel(),
            name="micro-average",
            ax=ax,
            curve_kwargs={"color": "black", "linestyle": "--", "linewidth": 2.5},
        )
        grid = np.unique(np.concatenate([c.fpr for c in curves]))
        ax.plot(
            grid,
            np.mean([np.interp(grid, c.fpr, c.tpr) for c in curves], axis=0),
            linestyle="--",
            linewidth=2.5,
            label=f"macro-average (AUC = {np.mean([c.roc_auc for c in curves]):.2f})",
        )
    ax.plot([0, 1], [0, 1], color="grey", linewidth=0.8, linestyle=":", label="chance")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1.01),
        xlabel="false positive rate (1 - specificity)",
        ylabel="true positive rate (sensitivity)",
        title=title,
    )
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # outside the axes: covers no curve
    ax.grid(alpha=0.3)
    return _finish(fig, path)


def _wrap_caption(caption: str, width: int) -> str:
    """Break a long caption into lines of at most ``width`` characters (existing breaks kept)."""
    return "\n".join(textwrap.fill(line, width) or line for line in str(caption).splitlines() or [""])


def add_heatmap_colorbar(
    fig: Figure,
    axes=None,
    cmap: str = "jet",
    label: str = "Grad-CAM importance",
    vmin: float = 0.0,
    vmax: float = 1.0,
    ticks: Sequence[float] | None = None,
):
    """Add one colour bar for heat-map overlays to ``fig`` (beside ``axes``: default all of them).

    The default ``cmap`` "jet" is matplotlib's version of OpenCV's ``COLORMAP_JET``, the map
    :func:`wbc.gradcam.overlay_heatmap` uses: blue is low, red is high, on the heat map's 0-1
    scale. Returns the colour bar.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    axes = list(fig.axes) if axes is None else list(np.atleast_1d(axes).ravel())
    mappable = ScalarMappable(norm=Normalize(vmin=vmin, vmax=vmax), cmap=cmap)
    bar = fig.colorbar(mappable, ax=axes, shrink=0.6, aspect=30, label=label)
    ticks = [vmin, (vmin + vmax) / 2, vmax] if ticks is None else list(ticks)
    bar.set_ticks(ticks)
    if vmin == 0.0 and vmax == 1.0 and ticks == [0.0, 0.5, 1.0]:
        bar.set_ticklabels(["0 (low)", "0.5", "1 (high)"])
    return bar


def plot_image_gallery(
    images: Sequence[np.ndarray] | np.ndarray,
    titles: Sequence[str],
    ncols: int = 4,
    path: str | os.PathLike | None = None,
    title: str = "Images",
    colorbar_cmap: str | None = None,
    colorbar_label: str = "Grad-CAM importance",
) -> Figure:
    """A grid of RGB ``uint8`` images with one caption each (e.g. true / predicted / confidence).

    Long captions are wrapped so that neighbouring ones do not run into each other.
    ``colorbar_cmap`` (e.g. "jet" for :func:`wbc.gradcam.overlay_heatmap` images) adds one colour
    bar for the heat-map scale, labelled ``colorbar_label`` (see :func:`add_heatmap_colorbar`).
    """
    images = list(images)
    if len(titles) != len(images):
        raise WbcError(f"{len(titles)} titles for {len(images)} images: give one caption per image")
    ncols = max(1, min(ncols, len(images) or 1))
    nrows = max(1, math.ceil(len(images) / ncols))
    bar = 1.0 if colorbar_cmap else 0.0
    tile = min(2.6, (MAX_FIGURE_WIDTH - bar) / ncols)  # many columns: smaller tiles, not a wider figure
    fig = Figure(figsize=(tile * ncols + bar, (tile + 0.3) * nrows + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, caption in zip(axes, images, titles):
        ax.imshow(image)
        ax.set_title(_wrap_caption(caption, 30), fontsize=8)
    if not images:
        axes[0].text(0.5, 0.5, "no images to show", ha="center", va="center", transform=axes[0].transAxes)
    if colorbar_cmap and images:
        add_heatmap_colorbar(fig, axes, cmap=colorbar_cmap, label=colorbar_label)
    fig.suptitle(title)
    return _finish(fig, path)
