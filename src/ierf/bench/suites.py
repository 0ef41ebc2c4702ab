"""The three local-explanation tables of the paper (Sec. IV-B): which jobs, which metrics.

- ``main`` (Table I): methods × Poi./Att./Spa./Fid./Sta. on one model; on photo grids the
  grid pointing game replaces Poi./Att.
- ``activations`` (Table II): fidelity of every method on the toy ResNet with each activation.
- ``srd-ablation`` (Table IV): SRD with the raw / mean / clamped-mean μ(L→O) of Eq. 5, on
  the same data and metrics as ``main``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ierf.bench import KINDS
from ierf.bench.run import Job, Outcome, mean_se
from ierf.bench.tables import Table
from ierf.errors import IerfError
from ierf.metrics import metric
from ierf.metrics.base import Metric

#: Table I's methods (registry names), in the paper's order
MAIN_METHODS = ("saliency", "guided-backprop", "grad-x-input", "integrated-gradients",
                "lrp-zplus", "smoothgrad", "fullgrad", "gradcam", "gradcam++", "scorecam",
                "ablationcam", "xgradcam", "layercam", "layercam-high", "srd-low", "srd-high",
                "srd")
#: Table II's methods
ACTIVATION_METHODS = ("guided-backprop", "grad-x-input", "integrated-gradients", "lrp-zplus",
                      "smoothgrad", "fullgrad", "gradcam", "scorecam", "ablationcam", "xgradcam",
                      "layercam", "srd")
#: cheap methods for ``--quick`` (CI)
QUICK_METHODS = ("saliency", "grad-x-input", "gradcam", "srd")
#: Table II's columns: activation → toy model
ACTIVATION_MODELS = {"ReLU": "toy-resnet", "ELU": "toy-resnet-elu",
                     "LeakyReLU": "toy-resnet-leakyrelu", "Swish": "toy-resnet-silu",
                     "GELU": "toy-resnet-gelu", "Tanh": "toy-resnet-tanh"}
#: Table IV's rows: label → SRD ``final`` option
SRD_VARIANTS = {"raw": "raw", "mean": "mean", "clamped mean": "clamped-mean"}
#: column headers of the metrics
SHORT = {"pointing-game": "Poi.", "attribution-localisation": "Att.",
         "grid-pointing-game": "GPG", "sparseness": "Spa.", "fidelity": "Fid.",
         "stability": "Sta."}
#: what each metric column measures (the glossary under the figure and the Markdown table)
MEANING = {"pointing-game": "pointing game (Eq. 31), share of images whose map maximum lies on "
                            "the object (15 px tolerance at 224 px)",
           "attribution-localisation": "attribution localisation (Eq. 32), share of the "
                                       "positive relevance inside the object mask",
           "grid-pointing-game": "grid pointing game, share of the positive relevance in the "
                                 "target's cell of a 2×2 grid of photos (uniform map: 0.25)",
           "sparseness": "sparseness (Eq. 33), Gini index of |map|",
           "fidelity": "fidelity / faithfulness correlation, Pearson correlation of the "
                       "relevance of random pixel subsets with the logit drop when they are "
                       "set to 0",
           "stability": "stability / local Lipschitz estimate (Eq. 34), largest change of "
                        "the normalised map per change of the input under Gaussian noise"}


@dataclass
class Plan:
    """What one table runs: jobs, metrics by name, and how results become the table."""

    kind: str
    title: str
    jobs: list[Job]
    metrics: dict[str, Metric]

    def table(self, outcome: Outcome) -> Table:
        """Aggregate per-image scores into mean ± standard error."""
        if self.kind == "activations":
            rows = list(dict.fromkeys(j.row for j in self.jobs))
            cols = list(ACTIVATION_MODELS)
            cells = {(j.row, c): outcome.scores.get((j.model, j.row), {}).get("fidelity")
                     for j in self.jobs for c, m in ACTIVATION_MODELS.items() if j.model == m}
            directions = [self.metrics["fidelity"].score_direction] * len(cols)
            glossary = {"bars": f"{SHORT['fidelity']} = {MEANING['fidelity']}, of every "
                                "method on the toy ResNet with each activation function"}
        else:
            rows = [j.row for j in self.jobs]
            cols = list(self.metrics)
            cells = {(j.row, c): outcome.scores.get((j.model, j.row), {}).get(c)
                     for j in self.jobs for c in cols}
            directions = [m.score_direction for m in self.metrics.values()]
            glossary = {SHORT.get(c, c): MEANING[c] for c in cols if c in MEANING}
        stats = np.full((3, len(rows), len(cols)), np.nan)
        for r, row in enumerate(rows):
            for c, col in enumerate(cols):
                if cells.get((row, col)) is not None:
                    stats[:, r, c] = mean_se(cells[(row, col)])
        notes = [f"– {row} on {model}: {why}" for (model, row), why in outcome.unavailable.items()]
        return Table(self.title, rows, [SHORT.get(c, c) for c in cols], directions,
                     stats[0], stats[1], np.nan_to_num(stats[2]).astype(int), notes, glossary)


def metric_set(names: Sequence[str], image_size: int, quick: bool) -> dict[str, Metric]:
    """The metrics with the paper's settings (App. VII-G), scaled to the image size.

    The pointing game's 15-px tolerance is for 224-px inputs and scales with the image;
    ``quick`` uses fewer random subsets (fidelity) and noise samples (stability).
    """
    hyper: dict[str, dict[str, object]] = {
        "pointing-game": {"tolerance": round(15 * image_size / 224)},
        "fidelity": {"nr_runs": 10} if quick else {},
        "stability": {"nr_samples": 2} if quick else {},
    }
    return {n: metric(n, **hyper.get(n, {})) for n in names}


def default_model(data: str) -> str:
    """toy-resnet for the synthetic benchmark, EfficientNet-Lite0 for photos and folders."""
    return "toy-resnet" if data == "synthetic" else "efficientnet_lite0"


def plan(kind: str, model: str, data: str, methods: Sequence[str] | None,
         image_size: int, quick: bool) -> Plan:
    """The jobs and metrics of table ``kind`` (see the module docstring)."""
    if kind not in KINDS:
        raise IerfError(f"unknown table {kind!r}; use one of {', '.join(KINDS)}")
    localisation = ["grid-pointing-game"] if data == "photos" else \
        ["pointing-game", "attribution-localisation"]
    five = [*localisation, "sparseness", "fidelity", "stability"]
    if kind == "main":
        rows = methods or (QUICK_METHODS if quick else MAIN_METHODS)
        return Plan(kind, f"Local explanations of {model} on {data} (Table I)",
                    [Job(model, m) for m in rows], metric_set(five, image_size, quick))
    if kind == "srd-ablation":
        if methods:
            raise IerfError("the srd-ablation table compares SRD's μ(L→O) variants; "
                            "omit --methods")
        return Plan(kind, f"SRD final sharing-ratio variants, {model} on {data} (Table IV)",
                    [Job(model, "srd", label, (("final", final),))
                     for label, final in SRD_VARIANTS.items()], metric_set(five, image_size, quick))
    if data != "synthetic" or model != "toy-resnet":
        raise IerfError("the activations table runs on the synthetic benchmark with toy-resnet "
                        "and its activation variants; omit --model and --data")
    rows = methods or (QUICK_METHODS if quick else ACTIVATION_METHODS)
    return Plan(kind, "Fidelity per activation function, toy ResNet (Table II)",
                [Job(m, r) for r in rows for m in ACTIVATION_MODELS.values()],
                metric_set(["fidelity"], image_size, quick))
