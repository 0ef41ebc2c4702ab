"""Figures of FaCT explanations: concept-deletion curves (FaCT Fig. 7), the "P{i}: x %" concept
panels of one image with pixel traces and top reference images, and the two-class view of
shared concepts (Fig. 8)."""

from __future__ import annotations

import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ierf.errors import IerfError
from ierf.viz.cards import highlight
from ierf.viz.figures import save_figure

if TYPE_CHECKING:
    from ierf.fact.deletion import ConceptDeletion
    from ierf.fact.explain import FactExplanation


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_deletion_figure(results: Mapping[str, ConceptDeletion], path: str | Path,
                         title: str = "") -> Path:
    """One row per result (e.g. all concepts / always-on excluded), panels top-1 logit and
    accuracy vs the fraction of concepts deleted, one line per importance method."""
    plt = _plt()
    fig, axes = plt.subplots(len(results), 2, figsize=(9, 3.3 * len(results)), squeeze=False)
    for row, (name, res) in zip(axes, results.items()):
        x = res.fractions.numpy()
        for i, method in enumerate(res.methods):
            lw = 2.2 if method == "contribution" else 1.2
            row[0].plot(x, res.logit_curves()[i].numpy(), label=method, lw=lw)
            row[1].plot(x, res.accuracy_curves()[i].numpy(), label=method, lw=lw)
        deletable = int(res.counts[-1])
        for ax, what in zip(row, ("top-1 logit (mean)", "accuracy")):
            ax.set_title(f"{name}: {what}", fontsize=10)
            ax.set_xlabel(f"fraction of concepts deleted (of {deletable})")
            ax.grid(alpha=0.3)
        row[1].set_ylim(-0.02, 1.02)
    axes[0][1].legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return save_figure(fig, path, dpi=120)


def _wrap(name: str, width: int = 24) -> str:
    return textwrap.fill(name, width)


def _show(ax: Any, image: torch.Tensor, trace: torch.Tensor | None = None,
          title: str = "") -> None:
    """An image (3, H, W), dimmed outside the positive part of a pixel trace if given."""
    if trace is not None:
        image = highlight(image[None], trace[None])[0]
    ax.imshow(image.detach().cpu().permute(1, 2, 0).clamp(0, 1).numpy())
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def _concept_rows(fig: Any, gs: Any, expl: FactExplanation, concepts: Sequence[int],
                  image: torch.Tensor, references: torch.Tensor, labels: Sequence[str],
                  reference_names: Sequence[str]) -> None:
    n = expl.reference_ids.shape[1]
    for i, (k, label) in enumerate(zip(concepts, labels), start=1):
        r = expl.row(k)
        _show(fig.add_subplot(gs[i, 0]), image, expl.traces[r], label)
        for j in range(n):
            idx = int(expl.reference_ids[r, j])
            _show(fig.add_subplot(gs[i, j + 1]), references[idx], expl.reference_traces[r, j],
                  f"{reference_names[idx]} · a={float(expl.reference_activations[r, j]):.3g}")


def save_explanation_figure(expl: FactExplanation, image: torch.Tensor,
                            references: torch.Tensor, path: str | Path,
                            class_names: Sequence[str], reference_names: Sequence[str]
                            ) -> Path:
    """The top concepts of the target logit: a header with the image and each concept's share
    (plus "other concepts"), then one row per concept – its trace on the image ("P{i}: x %")
    and its top reference images with their traces."""
    plt = _plt()
    top = expl.top.tolist()
    shares = 100 * expl.shares(0)
    n = expl.reference_ids.shape[1]
    fig = plt.figure(figsize=(1.9 * (n + 1) + 1.5, 1.9 * (len(top) + 1) + 0.4))
    gs = fig.add_gridspec(len(top) + 1, n + 1)
    t = expl.target
    _show(fig.add_subplot(gs[0, 0]), image[0],
          title=f"{_wrap(class_names[t])}\nlogit {expl.logit(0):.3g}")
    ax = fig.add_subplot(gs[0, 1:])
    names = [f"P{i + 1}: concept {k}" for i, k in enumerate(top)] + ["other concepts"]
    values = [float(shares[k]) for k in top] + [100 * expl.other_share(expl.top)]
    ax.barh(range(len(values)), values, color=["tab:blue"] * len(top) + ["tab:gray"])
    ax.set_yticks(range(len(values)), names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="k", lw=0.6)
    ax.set_xlabel(f"share of the logit of {class_names[t]} (%) · Σ = 100 %", fontsize=8)
    labels = [f"P{i + 1}: {float(shares[k]):.1f} % · concept {k}\n"
              f"on {100 * float(expl.frequency[expl.row(k)]):.0f} % of references"
              for i, k in enumerate(top)]
    _concept_rows(fig, gs, expl, top, image[0], references, labels, reference_names)
    fig.suptitle(f"FaCT · {expl.layer} · exact concept contributions (Eq. 9) and pixel "
                 "traces (Eq. 12)", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)


def save_versus_figure(expl: FactExplanation, image: torch.Tensor, references: torch.Tensor,
                       path: str | Path, class_names: Sequence[str],
                       reference_names: Sequence[str]) -> Path:
    """The two-class view (Fig. 8): concepts contributing to both the target and the versus
    logit, their shares of each, traces and top reference images."""
    plt = _plt()
    shared = expl.shared.tolist()
    n = expl.reference_ids.shape[1]
    fig = plt.figure(figsize=(1.9 * (n + 1) + 1.5, 1.9 * (len(shared) + 1) + 0.4))
    gs = fig.add_gridspec(len(shared) + 1, n + 1)
    a, b = expl.target, expl.versus
    if b is None:
        raise IerfError("the two-class view needs a versus class")
    _show(fig.add_subplot(gs[0, 0]), image[0],
          title=f"{_wrap(class_names[a])}: {expl.logit(0):.3g}\n"
                f"{_wrap(class_names[b])}: {expl.logit(1):.3g}")
    ax = fig.add_subplot(gs[0, 1:])
    if shared:
        pos = torch.arange(len(shared), dtype=torch.float)
        for which, (off, name) in enumerate(((-0.2, class_names[a]), (0.2, class_names[b]))):
            ax.barh((pos + off).numpy(), [100 * float(expl.shares(which)[k]) for k in shared],
                    height=0.4, label=name)
        ax.set_yticks(range(len(shared)), [f"concept {k}" for k in shared], fontsize=8)
        ax.invert_yaxis()
        ax.legend(fontsize=7)
    else:
        ax.text(0.5, 0.5, "no concept contributes to both logits", ha="center", va="center")
        ax.set_yticks([])
    ax.set_xlabel("share of each logit (%)", fontsize=8)
    labels = [f"concept {k}: {100 * float(expl.shares(0)[k]):.1f} % | "
              f"{100 * float(expl.shares(1)[k]):.1f} %\n"
              f"on {100 * float(expl.frequency[expl.row(k)]):.0f} % of references"
              for k in shared]
    _concept_rows(fig, gs, expl, shared, image[0], references, labels, reference_names)
    fig.suptitle(f"FaCT · concepts shared by {class_names[a]} and {class_names[b]}", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path, dpi=110)
