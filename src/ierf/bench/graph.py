"""Validation of ICAT edges: interlayer C-deletion / C-insertion over AT methods (IERF Sec.
VI-C, Fig. 11; GIG Sec. 4.2.3).

For a layer pair ``a → b``, each image's targets are the ``n_targets`` concepts of ``b`` most
important for its predicted class (GIG Sec. 4.2.3: "the five most important target layer
concepts"; importance ``Σ_i IG(u_iq, logit_c)``, Sec. VI-A2). Every method of
:data:`ierf.graph.METHODS` ranks the parent concepts of each target (:func:`ierf.graph.icat`)
and :func:`ierf.graph.interlayer_curves` deletes / inserts them in that order. AUCs are
averaged over those (image, target) pairs whose reference alignment
``max_i cos(x̃_i^b − o, v_t^b)`` is at least ``min_alignment`` (the curves are divided by it:
a target barely present in the image gives an ill-conditioned ratio); mean ± SEM.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ierf.bench.tables import Table
from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError
from ierf.graph.icat import METHODS, concept_importance, icat
from ierf.graph.validation import interlayer_curves
from ierf.models.model import Model
from ierf.models.subnetwork import Subnetwork

COLUMNS = ("C-deletion AUC", "C-insertion AUC")
DIRECTIONS = ("lower", "higher")


def interlayer_validation(model: Model, basis_a: ConceptBasis, basis_b: ConceptBasis,
                          x: torch.Tensor, methods: Sequence[str] = METHODS, *,
                          n_targets: int = 5, steps: int = 20, n_steps: int = 32,
                          min_alignment: float = 0.5,
                          internal_batch_size: int | None = None
                          ) -> tuple[Table, dict[str, dict[str, torch.Tensor]]]:
    """The validation table of one layer pair and the mean curves of every method.

    Returns
    -------
    table : rows = methods, columns = C-deletion AUC ↓ and C-insertion AUC ↑ (mean ± SEM over
        the valid (image, target) pairs).
    curves : method → ``{"deletion": (steps + 1,), "insertion": (steps + 1,)}`` mean curves
        over the same pairs (x-axis: fraction of the image's active parent concepts).
    """
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise IerfError(f"unknown ICAT method(s) {unknown}; choose from {', '.join(METHODS)}")
    a, b = basis_a.layer, basis_b.layer
    sub = Subnetwork(model, a, b)
    with torch.no_grad():
        pfvs = sub.pfvs_a(x)
        U_a = basis_a.encode(pfvs.vectors)
        X_b = sub(pfvs.vectors, pfvs.prefix)
        U_b = basis_b.encode(X_b)
        predicted = model(x).argmax(1)
    importance = concept_importance(Subnetwork(model, b, "output"), basis_b, x, predicted,
                                    n_steps=n_steps, internal_batch_size=internal_batch_size)
    top = importance.topk(min(n_targets, basis_b.n_concepts), dim=1).indices      # (B, n)
    targets = top.unique()
    chosen = (targets[None, :, None] == top[:, None, :]).any(-1)                    # (B, T)
    with torch.no_grad():
        X_hat_b = sub(basis_a.decode(U_a), pfvs.prefix)
        offset = basis_b.decode(X_hat_b.new_zeros(1, basis_b.n_concepts))[0]
        cos = F.normalize(X_hat_b - offset, dim=-1) @ F.normalize(
            basis_b.dictionary.to(X_hat_b)[:, targets], dim=0)
    valid = chosen & (cos.amax(1) >= min_alignment)
    if not valid.any():
        raise IerfError(f"no target concept of {b!r} aligns with these images; use more "
                        "images or another basis")
    rows, mean, se, n = [], [], [], []
    curves: dict[str, dict[str, torch.Tensor]] = {}
    for method in methods:
        scores = icat(sub, basis_a, basis_b, pfvs, method, targets, U_a=U_a, U_b=U_b,
                      n_steps=n_steps, internal_batch_size=internal_batch_size)
        stats, curves[method] = [], {}
        for mode in ("deletion", "insertion"):
            c, auc = interlayer_curves(sub, basis_a, basis_b, pfvs, scores, targets, mode=mode,
                                       steps=steps, U_a=U_a)
            vals = auc[valid].double()
            stats.append((vals.mean().item(), _sem(vals), len(vals)))
            curves[method][mode] = c[valid].mean(0)
        rows.append(method)
        mean.append([s[0] for s in stats])
        se.append([s[1] for s in stats])
        n.append([s[2] for s in stats])
    table = Table(f"{model.name} · {a} → {b} · {len(x)} images × top-{top.shape[1]} target "
                  f"concepts ({int(valid.sum())} pairs with alignment ≥ {min_alignment:g})",
                  rows, list(COLUMNS),
                  list(DIRECTIONS), np.array(mean), np.array(se), np.array(n))
    table.notes.append(_verdict(table))
    return table, curves


def _sem(v: torch.Tensor) -> float:
    return (v.std() / len(v) ** 0.5).item() if len(v) > 1 else float("nan")


def _verdict(table: Table) -> str:
    """Which method is best per column, and whether IG is (the paper's finding on ResNet50)."""
    best = table.best()
    words = []
    for c, column in enumerate(table.columns):
        names = [table.rows[r] for r in sorted(best[c])]
        ig = "ig" in names
        words.append(f"{column}: best {', '.join(names)}" + ("" if ig or "ig" not in table.rows
                                                              else " (not IG)"))
    return "; ".join(words) + "."
