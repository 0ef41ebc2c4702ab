"""Benchmark tables as Markdown (mean ± standard error, best in bold) and CSV, and a figure.

A :class:`Table` is rows (methods) × columns (metrics, or models for Table II); each column
has a ``score_direction`` ("higher" or "lower" is better), which decides its best entry, and
may have a line in the ``glossary`` that says what its (abbreviated) header means.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ierf.io import atomic_path
from ierf.viz.figures import save_figure

#: bar colours of :meth:`Table.figure`: the best row of a column, and the others
BEST, OTHER = "tab:orange", "tab:blue"


@dataclass
class Table:
    """Mean, standard error and count per (row, column); NaN where a row has no result."""

    title: str
    rows: list[str]
    columns: list[str]
    directions: list[str]  # per column: "higher" or "lower"
    mean: np.ndarray  # (rows, columns)
    se: np.ndarray
    n: np.ndarray
    notes: list[str] = field(default_factory=list)
    glossary: dict[str, str] = field(default_factory=dict)  # column header → what it means

    def best(self, digits: int = 3) -> list[set[int]]:
        """Per column, the rows with the best mean at ``digits`` decimals (ties as shown in
        the table are all best; none if the column is all NaN)."""
        out = []
        for c, direction in enumerate(self.directions):
            col = self.mean[:, c].round(digits)
            finite = np.isfinite(col)
            if not finite.any():
                out.append(set())
                continue
            target = col[finite].max() if direction == "higher" else col[finite].min()
            out.append({r for r in range(len(self.rows)) if finite[r] and col[r] == target})
        return out

    def markdown(self, digits: int = 3) -> str:
        """A Markdown table: ``mean ± se`` per cell, the best per column in bold, ``–`` if none."""
        arrows = {"higher": "↑", "lower": "↓"}
        head = ["method", *(f"{c} {arrows[d]}" for c, d in zip(self.columns, self.directions))]
        lines = [f"**{self.title}**", "", "| " + " | ".join(head) + " |",
                 "|" + "|".join(["---", *["---:"] * len(self.columns)]) + "|"]
        best = self.best(digits)
        for r, row in enumerate(self.rows):
            cells = [row]
            for c in range(len(self.columns)):
                m, s = self.mean[r, c], self.se[r, c]
                if not math.isfinite(m):
                    cells.append("–")
                    continue
                text = f"{m:.{digits}f}" + (f" ± {s:.{digits}f}" if math.isfinite(s) else "")
                cells.append(f"**{text}**" if r in best[c] else text)
            lines.append("| " + " | ".join(cells) + " |")
        if self.glossary:
            lines += ["", "; ".join(f"{c}: {text}" for c, text in self.glossary.items()) + "."]
        if self.notes:
            lines += ["", *self.notes]
        return "\n".join(lines) + "\n"

    def csv(self) -> str:
        """CSV with full precision: ``method`` then ``<column>``, ``<column> se``, ``<column> n``."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["method", *(f"{c}{s}" for c in self.columns for s in ("", " se", " n"))])
        for r, row in enumerate(self.rows):
            w.writerow([row, *(v for c in range(len(self.columns)) for v in
                               (repr(float(self.mean[r, c])), repr(float(self.se[r, c])),
                                int(self.n[r, c])))])
        return buf.getvalue()

    def figure(self, path: str | Path) -> None:
        """Bar chart per column (one bar per row, standard-error whiskers) as a PNG, with a
        legend for the colours and whiskers and, below it, the :attr:`glossary`."""
        import textwrap

        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch

        k = len(self.columns)
        width = 2.6 * k + 1.5
        caption = "\n".join(textwrap.fill(f"{c}: {text}", width=int(width * 15))
                            for c, text in self.glossary.items())
        bars, foot = 1.7 + 0.28 * len(self.rows), 0.3 + 0.14 * (caption.count("\n") + 1)
        fig = plt.figure(figsize=(width, bars + foot), layout="constrained")
        top, bottom = fig.subfigures(2, 1, height_ratios=[bars, foot])
        axes = top.subplots(1, k, squeeze=False)
        y = np.arange(len(self.rows))
        best = self.best()
        for c, ax in enumerate(axes[0]):
            colours = [BEST if r in best[c] else OTHER for r in range(len(self.rows))]
            ax.barh(y, np.nan_to_num(self.mean[:, c]), xerr=np.nan_to_num(self.se[:, c]),
                    color=colours, capsize=2)
            ax.set_yticks(y, self.rows if c == 0 else [""] * len(self.rows), fontsize=8)
            ax.invert_yaxis()
            ax.set_title(f"{self.columns[c]} {'↑' if self.directions[c] == 'higher' else '↓'}",
                         fontsize=9)
            ax.tick_params(axis="x", labelsize=7)
            ax.axvline(0, color="k", lw=0.5)
        top.suptitle(self.title, fontsize=10)
        handles = [Patch(color=BEST, label="best of the column (ties: all)"),
                   Patch(color=OTHER, label="other rows"),
                   Line2D([], [], color="k", marker="|", markersize=8, lw=1,
                          label="± standard error of the mean"),
                   Line2D([], [], ls="none", label="↑ higher is better, ↓ lower is better")]
        bottom.legend(handles=handles, loc="upper center", ncols=4, fontsize=7, frameon=False,
                      handlelength=1.2, borderaxespad=0)
        if caption:
            bottom.text(0.01, 0.02, caption, fontsize=7, ha="left", va="bottom")
        save_figure(fig, path, dpi=120)

    def write(self, out: str | Path) -> None:
        """Write ``table.md``, ``table.csv`` and ``figure.png`` into ``out``."""
        out = Path(out)
        for name, text in (("table.md", self.markdown()), ("table.csv", self.csv())):
            with atomic_path(out / name) as tmp:
                Path(tmp).write_text(text)
        self.figure(out / "figure.png")


def read_csv(path: str | Path) -> dict[str, dict[str, float]]:
    """Parse a table CSV back: ``{row: {column header: value}}``."""
    with open(path, newline="") as f:
        return {r.pop("method"): {k: float(v) for k, v in r.items()} for r in csv.DictReader(f)}
