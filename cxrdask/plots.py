"""Every chart cxrdask draws, built on :class:`matplotlib.figure.Figure`.

Figures are made with matplotlib's object API and returned, saved only where asked: the
library never calls ``matplotlib.use`` or pyplot, so a notebook's backend and its open
figures are left alone. Charts of results from a synthetic archive or a random-weight
backbone carry that caveat on the chart itself.
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cxrdask.archive.findings import labelled_rows
from cxrdask.archive.labels import LABELS

DPI = 110
# 14 findings, 14 distinct colours: tab20's dark halves then its light ones.
_TAB20 = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
          (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
          (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150)]
FINDING_COLOURS = {name: tuple(c / 255 for c in rgb) for name, rgb in zip(LABELS, _TAB20, strict=True)}
_LINESTYLES = ["-", "--", ":"]


def finding_colour(name: str, position: int) -> tuple[float, ...]:
    """NIH's findings keep their colours in every chart; another archive's take tab20's in
    turn by position (a 28-finding PadChest chart repeats a colour with another line style)."""
    if name in FINDING_COLOURS:
        return FINDING_COLOURS[name]
    return tuple(c / 255 for c in _TAB20[position % len(_TAB20)])



def new_figure(width: float, height: float) -> Figure:
    """A figure with its own Agg canvas (no pyplot, no global backend switch)."""
    figure = Figure(figsize=(width, height))
    FigureCanvasAgg(figure)
    return figure


def save_figure(figure: Figure, path: str | os.PathLike) -> str:
    """Write ``figure`` as PNG at ``path``; returns the path as a string."""
    figure.savefig(path, dpi=DPI)
    return str(path)


def add_caveat(figure: Figure, caveat: str | None) -> None:
    if caveat:
        figure.text(0.5, 0.995, caveat, ha="center", va="top", fontsize=8, color="#a33",
                    style="italic")


def roc_figure(targets: np.ndarray, probabilities: np.ndarray, caveat: str | None = None,
               labels=LABELS, known: np.ndarray | None = None) -> Figure:
    """One ROC curve per disease (on the images labelled for it), each its own colour, with
    its AUC in the legend; a disease with only one class in the split is listed as ``n/a``
    rather than left out silently."""
    from sklearn.metrics import roc_auc_score, roc_curve

    figure = new_figure(9.5, 6)
    ax = figure.add_axes((0.08, 0.09, 0.55, 0.82))
    for i, name in enumerate(labels):
        rows = labelled_rows(known, i, len(targets))
        y, p = targets[rows, i], probabilities[rows, i]
        positives = int(y.sum())
        style = _LINESTYLES[(i // 10) % len(_LINESTYLES)]
        colour = finding_colour(name, i)
        if 0 < positives < len(y):
            fpr, tpr, _ = roc_curve(y, p)
            ax.plot(fpr, tpr, linewidth=1.2, linestyle=style, color=colour,
                    label=f"{name}: {roc_auc_score(y, p):.3f} ({positives} pos.)")
        else:
            ax.plot([], [], linestyle=style, color=colour,
                    label=f"{name}: n/a ({positives} pos.)")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(f"ROC per finding ({len(targets)} images)", fontsize=10)
    ax.legend(fontsize=7.5, loc="center left", bbox_to_anchor=(1.02, 0.5), title="finding: AUC",
              title_fontsize=8, frameon=False)
    add_caveat(figure, caveat)
    return figure


def study_figure(summary: pd.DataFrame) -> Figure:
    """Per archive, the mean AUC of the head trained on every archive (internal, its test
    split) beside that of a head that never saw it (external), over the same findings."""
    figure = new_figure(max(5.0, 1.6 * len(summary) + 2), 4.2)
    ax = figure.add_axes((0.1, 0.15, 0.86, 0.72))
    x = np.arange(len(summary))
    for offset, column, label in ((-0.2, "internal_auc", "internal (its test split)"),
                                  (0.2, "external_auc", "external (left out of training)")):
        values = summary[column].to_numpy(dtype=float)
        ax.bar(x + offset, np.nan_to_num(values), width=0.4, label=label)
        for position, value in zip(x + offset, values, strict=True):
            ax.text(position, (value if np.isfinite(value) else 0) + 0.01,
                    f"{value:.2f}" if np.isfinite(value) else "n/a", ha="center", fontsize=8)
    ax.set_xticks(x, [f"{a}\n({n} findings)" for a, n in zip(summary["archive"], summary["findings"],
                                                              strict=True)])
    ax.axhline(0.5, color="grey", linewidth=0.8, linestyle=":")
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("mean AUC")
    ax.set_title("How the head travels: each archive scored inside and outside its training")
    ax.legend(loc="lower right", fontsize=8)
    return figure


def shift_figure(prevalence: pd.DataFrame, names: tuple[str, str], separability: str) -> Figure:
    """Each shared finding's prevalence in two stores, side by side, under the domain
    classifier's AUC (how separable the stores are in feature space)."""
    figure = new_figure(max(6.0, 0.7 * len(prevalence) + 2), 4.2)
    ax = figure.add_axes((0.08, 0.3, 0.9, 0.58))
    x = np.arange(len(prevalence))
    for offset, column, name in ((-0.2, "prevalence_a", names[0]), (0.2, "prevalence_b", names[1])):
        ax.bar(x + offset, np.nan_to_num(prevalence[column].to_numpy(dtype=float)), width=0.4,
               label=name)
    ax.set_xticks(x, list(prevalence["finding"]), rotation=40, ha="right", fontsize=8)
    ax.set_ylabel("share of labelled images positive")
    ax.set_title(f"{names[0]} against {names[1]}: domain classifier AUC {separability}", fontsize=9)
    ax.legend(fontsize=8)
    return figure


def suspects_figure(top: pd.DataFrame, thumbnails: np.ndarray | None) -> Figure:
    """The most suspect labels: each image's thumbnail (the store's 32 x 32 one, where it
    keeps them) under its finding, the label the store gives and the out-of-fold
    probability; without thumbnails, the scores as bars."""
    columns = 6
    if thumbnails is None or not len(top):
        figure = new_figure(8, 0.3 * max(len(top), 1) + 1.2)
        ax = figure.add_axes((0.45, 0.08, 0.5, 0.85))
        ax.barh([f"{r.image}: {r.finding} = {r.given}" for r in top.itertuples()], top["score"])
        ax.invert_yaxis()
        ax.set_xlabel("label quality score (cleanlab, self-confidence)")
        ax.tick_params(axis="y", labelsize=7)
        return figure
    rows = -(-len(top) // columns)
    figure = new_figure(1.7 * columns, 2.0 * rows + 0.4)
    for k, (row, thumbnail) in enumerate(zip(top.itertuples(), thumbnails, strict=True)):
        ax = figure.add_subplot(rows, columns, k + 1)
        ax.imshow(thumbnail, cmap="gray", vmin=0, vmax=255)
        ax.set_axis_off()
        ax.set_title(f"{row.image}\n{row.finding} = {row.given}, p {row.probability:.2f}",
                     fontsize=6)
    figure.suptitle("Most suspect labels (given label, out-of-fold probability)", fontsize=9)
    return figure


def auc_bars_figure(table: pd.DataFrame, caveat: str | None = None) -> Figure:
    """Grouped bars per disease: cxrdask, Wang et al. 2017 and CheXNet; a disease whose AUC
    cannot be computed on the split is marked ``n/a`` above its place."""
    figure = new_figure(11, 4.8)
    ax = figure.add_axes((0.06, 0.25, 0.92, 0.66))
    x = np.arange(len(table))
    for offset, column, label in ((-0.27, "auc", "cxrdask"), (0.0, "wang2017", "Wang 2017"),
                                  (0.27, "chexnet", "CheXNet")):
        values = table[column].to_numpy(dtype=float)
        ax.bar(x[np.isfinite(values)] + offset, values[np.isfinite(values)], width=0.27, label=label)
    for position, value in zip(x, table["auc"].to_numpy(dtype=float), strict=True):
        if not np.isfinite(value):
            ax.text(position - 0.27, 0.42, "n/a", ha="center", va="bottom", fontsize=7, rotation=90)
    ax.set_xticks(x, table["label"], rotation=40, ha="right")
    ax.set_ylim(0.4, 1.0)
    ax.axhline(0.5, color="grey", linestyle=":")
    ax.set_ylabel("test ROC AUC")
    ax.legend(ncols=3, fontsize=8, loc="upper left")
    add_caveat(figure, caveat)
    return figure


def curves_figure(history: pd.DataFrame) -> Figure:
    """Train and validation loss per epoch, with the learning rate on a second axis."""
    figure = new_figure(7.5, 4)
    ax = figure.add_axes((0.1, 0.13, 0.75, 0.8))
    ax.plot(history["epoch"], history["train_loss"], label="train loss")
    ax.plot(history["epoch"], history["val_loss"], label="validation loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("weighted BCE")
    lr_axis = ax.twinx()
    lr_axis.plot(history["epoch"], history["lr"], color="grey", linestyle=":", label="lr")
    lr_axis.set_yscale("log")
    lr_axis.set_ylabel("learning rate")
    lines = ax.get_lines() + lr_axis.get_lines()
    ax.legend(lines, [str(line.get_label()) for line in lines], loc="upper right", fontsize=8,
              framealpha=0.8)
    return figure


def grid_figure(frame: pd.DataFrame) -> Figure:
    """Heatmap of best validation loss over learning rate x weight decay."""
    table = frame.pivot(index="lr", columns="weight_decay", values="best_val_loss")
    figure = new_figure(6.5, 4.5)
    ax = figure.add_axes((0.15, 0.13, 0.6, 0.8))
    image = ax.imshow(table.to_numpy(), cmap="viridis_r")
    ax.set_xticks(range(len(table.columns)), [f"{v:g}" for v in table.columns])
    ax.set_yticks(range(len(table.index)), [f"{v:g}" for v in table.index])
    ax.set_xlabel("weight decay")
    ax.set_ylabel("learning rate")
    for (i, j), value in np.ndenumerate(table.to_numpy()):
        ax.text(j, i, f"{value:.4f}", ha="center", va="center", color="white", fontsize=8)
    figure.colorbar(image, ax=ax, label="best validation loss")
    return figure


def subgroup_gap_figure(subgroups: pd.DataFrame, caveat: str | None = None) -> Figure:
    """A heatmap of each subgroup's AUC minus the rest of the split's, per disease and for the
    mean (blank where the subgroup cannot score a disease)."""
    shown = subgroups[subgroups["subgroup"] != "all"]
    grid = shown.pivot(index="subgroup", columns="label", values="gap")
    findings = [name for name in dict.fromkeys(shown["label"]) if name != "mean"]
    grid = grid.reindex(index=list(dict.fromkeys(shown["subgroup"])), columns=[*findings, "mean"])
    values = grid.to_numpy(dtype=float)
    limit = max(0.05, float(np.nanmax(np.abs(values))) if np.isfinite(values).any() else 0.05)
    figure = new_figure(12, 0.45 * len(grid) + 2.2)
    ax = figure.add_axes((0.12, 0.3, 0.8, 0.6))
    image = ax.imshow(np.ma.masked_invalid(values), cmap="RdBu", vmin=-limit, vmax=limit,
                      aspect="auto")
    ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=40, ha="right", fontsize=8)
    ax.set_yticks(range(grid.shape[0]), grid.index, fontsize=8)
    for (r, c), value in np.ndenumerate(values):
        if np.isfinite(value):
            ax.text(c, r, f"{value:+.2f}", ha="center", va="center", fontsize=6)
    figure.colorbar(image, ax=ax, label="AUC gap to the rest of the split", fraction=0.03)
    add_caveat(figure, caveat)
    return figure


__all__ = [
    "FINDING_COLOURS",
    "add_caveat",
    "auc_bars_figure",
    "curves_figure",
    "finding_colour",
    "grid_figure",
    "new_figure",
    "roc_figure",
    "save_figure",
    "shift_figure",
    "study_figure",
    "subgroup_gap_figure",
    "suspects_figure",
]
