"""Validation of ICAT edges: interlayer C-deletion / C-insertion over AT methods (IERF Sec.
VI-C, Fig. 11; GIG Sec. 4.2.3).

For a layer pair ``a → b``, each image's targets are the ``n_targets`` concepts of ``b`` most
important for its predicted class (GIG Sec. 4.2.3: "the five most important target layer
concepts"; importance ``Σ_i IG(u_iq, logit_c)``, Sec. VI-A2). Every method of
:data:`ierf.graph.METHODS` ranks the parent concepts of each target (:func:`ierf.graph.icat`)
and :func:`ierf.graph.interlayer_curves` deletes / inserts them in that order. AUCs are
averaged over those (image, target) pairs whose reference alignment
``max_i cos(x̃_i^b − o, v_t^b)`` is at least ``min_alignment`` (the curves are divided by it:
a target barely present in the image gives an ill-conditioned ratio); mean ± SEM. The same
AUCs are also averaged per target concept (:class:`TargetAUCs`): the faithfulness of that
node's incoming ICAT edges, which ``ierf graph show --faithfulness`` shows in its panel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

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


@dataclass
class TargetAUCs:
    """Interlayer C-deletion / C-insertion AUCs per target concept of layer ``b``: the mean
    over the valid (image, target) pairs of that target (Sec. VI-C1).

    Attributes
    ----------
    targets : (T,) basis indices of the target concepts of ``b``.
    pairs : (T,) valid (image, target) pairs averaged per target (0: AUCs are NaN).
    deletion, insertion : method → (T,) mean AUC (deletion: lower is better, insertion:
        higher is better).
    """

    targets: torch.Tensor
    pairs: torch.Tensor
    deletion: dict[str, torch.Tensor]
    insertion: dict[str, torch.Tensor]

    def nodes(self, layer: str) -> dict[str, dict[str, Any]]:
        """Graph node id ``"<layer>:<k>"`` → ``{"pairs", "deletion": {method: AUC},
        "insertion": {method: AUC}}`` for the targets with at least one pair."""
        return {f"{layer}:{k}": {"pairs": n,
                                 "deletion": {m: float(v[t]) for m, v in self.deletion.items()},
                                 "insertion": {m: float(v[t]) for m, v in self.insertion.items()}}
                for t, (k, n) in enumerate(zip(self.targets.tolist(), self.pairs.tolist()))
                if n > 0}


def interlayer_validation(model: Model, basis_a: ConceptBasis, basis_b: ConceptBasis,
                          x: torch.Tensor, methods: Sequence[str] = METHODS, *,
                          n_targets: int = 5, steps: int = 20, n_steps: int = 32,
                          min_alignment: float = 0.5,
                          internal_batch_size: int | None = None
                          ) -> tuple[Table, dict[str, dict[str, torch.Tensor]], TargetAUCs]:
    """The validation table of one layer pair, the mean curves of every method and the AUCs
    per target concept.

    Returns
    -------
    table : rows = methods, columns = C-deletion AUC ↓ and C-insertion AUC ↑ (mean ± SEM over
        the valid (image, target) pairs).
    curves : method → ``{"deletion": (steps + 1,), "insertion": (steps + 1,)}`` mean curves
        over the same pairs (x-axis: fraction of the image's active parent concepts).
    per_target : the same AUCs averaged per target concept (:class:`TargetAUCs`).
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
    pairs = valid.sum(0)
    per_target = TargetAUCs(targets.cpu(), pairs.cpu(), {}, {})
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
            getattr(per_target, mode)[method] = (
                torch.where(valid, auc.double(), 0).sum(0) / pairs).float().cpu()  # NaN: no pair
        rows.append(method)
        mean.append([s[0] for s in stats])
        se.append([s[1] for s in stats])
        n.append([s[2] for s in stats])
    table = Table(f"{model.name} · {a} → {b} · {len(x)} images × top-{top.shape[1]} target "
                  f"concepts ({int(valid.sum())} pairs with alignment ≥ {min_alignment:g})",
                  rows, list(COLUMNS),
                  list(DIRECTIONS), np.array(mean), np.array(se), np.array(n))
    table.notes.append(_verdict(table))
    return table, curves, per_target


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
