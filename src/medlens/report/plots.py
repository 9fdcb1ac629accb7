"""Figures shared by every report: matplotlib (Agg, off-screen) to PNG bytes, training curves.

matplotlib is imported inside the functions, never at ``import medlens``, so ``medlens --help``
stays fast and no GUI backend is ever touched.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

DPI = 100


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend (off-screen; works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure(ncols: int = 1, nrows: int = 1, *, size: tuple[float, float] = (4.2, 3.2), **kwargs):
    """A new figure of ``ncols x nrows`` panels, each ``size`` inches; returns ``(fig, axes)``."""
    plt = pyplot()
    fig, axes = plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows), dpi=DPI,
                             squeeze=False, **kwargs)
    return fig, axes


def to_png(fig) -> bytes:
    """Render and close ``fig``; returns the PNG file's bytes."""
    plt = pyplot()
    buffer = io.BytesIO()
    try:
        fig.tight_layout()
        fig.savefig(buffer, format="png", dpi=DPI)
    finally:
        plt.close(fig)
    return buffer.getvalue()


def _floats(rows: list[dict], column: str) -> tuple[list[float], list[float]]:
    """``(epochs, values)`` of the rows where ``column`` holds a number."""
    epochs, values = [], []
    for row in rows:
        text = row.get(column) or ""
        try:
            value = float(text)
        except ValueError:
            continue
        epochs.append(float(row["epoch"]))
        values.append(value)
    return epochs, values


def curves_png(series: Sequence[tuple[str, list[dict]]], columns: Sequence[str], *, title: str,
               ylabel: str) -> bytes | None:
    """One panel: ``column`` against epoch for every ``(label, metrics.csv rows)`` in ``series``.

    Returns:
        PNG bytes, or ``None`` when no series holds any value of ``columns``.
    """
    fig, axes = figure(size=(4.6, 3.2))
    ax, drawn = axes[0, 0], 0
    styles = ("solid", "dashed", "dotted", "dashdot")
    for k, (label, rows) in enumerate(series):
        for j, column in enumerate(columns):
            epochs, values = _floats(rows, column)
            if values:  # one colour per run, one line style per column (a single run: one colour per column)
                colour = f"C{j if len(series) == 1 else k}"
                style = "solid" if len(series) == 1 else styles[j % len(styles)]
                name = column if len(series) == 1 else f"{label}: {column}"
                ax.plot(epochs, values, color=colour, linestyle=style, marker="o" if len(values) < 30 else None,
                        markersize=3, label=name)
                drawn += 1
    if not drawn:
        pyplot().close(fig)
        return None
    ax.set(title=title, xlabel="epoch", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return to_png(fig)


def loss_columns(rows: list[dict]) -> list[str]:
    return [c for c in ("train_loss", "val_loss") if rows and c in rows[0]]


def validation_columns(rows: list[dict]) -> list[str]:
    """The validation metrics of a metrics.csv: ``val_auc`` / ``val_accuracy`` or ``val_dice[_class]``."""
    if not rows:
        return []
    return [c for c in rows[0] if c.startswith("val_") and c != "val_loss"]
