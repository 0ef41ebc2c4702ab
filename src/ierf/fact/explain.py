"""A readable FaCT explanation of one image (FaCT Sec. 3.1 Eqs. 9–12, Sec. 6 Fig. 8).

The logit of the explained class is split into the contributions of its top concepts – the
paper's "P{i}: x %" panels, each concept's share of the logit – plus the remaining concepts
("other concepts"); the shares sum to 100 % because the contributions are exact (Eq. 9). Each
shown concept comes with its pixel trace on the image (Eqs. 10–12) and its top-activating
images of a reference set, traced too. For a misclassification (or any second class) the
two-class view lists the concepts that contribute to both logits: the shared concept basis
shows what the two classes have in common (Fig. 8).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ierf.errors import IerfError
from ierf.fact.contributions import _layer, as_fact, concept_contributions, concept_traces
from ierf.fact.deletion import eval_mode, per_concept
from ierf.fact.model import FaCT


def concept_activations(model: object, x: Tensor, layer: str | None = None,
                        batch_size: int = 256) -> Tensor:
    """Concept activations ``a_k = Σ_{h,w} u_k`` (Eq. 10) of images ``x``: (N, K)."""
    return _forward(as_fact(model), x, layer, batch_size)[1]


def _forward(fact: FaCT, x: Tensor, layer: str | None, batch_size: int
             ) -> tuple[Tensor, Tensor]:
    """Logits (N, C) and concept activations (N, K) at ``layer``, in eval mode, batched."""
    layer = _layer(fact, layer)
    logits, acts = [], []
    with torch.no_grad(), eval_mode(fact):
        for start in range(0, len(x), batch_size):
            with fact.recording() as rec:
                logits.append(fact(x[start:start + batch_size]))
            acts.append(per_concept(rec.codes[layer]))
    return torch.cat(logits), torch.cat(acts)


@dataclass
class FactExplanation:
    """The numbers of a FaCT explanation of one image (see the module docstring).

    Attributes
    ----------
    logits : (C,) the image's logits.
    target : the explained class (default: the predicted one).
    versus : the second class of the two-class view, or ``None``.
    contributions : (2 or 1, K) concept contributions to the target [and versus] logit (Eq. 9).
    activations : (K,) concept activations on the image (Eq. 10).
    top : (M,) the concepts contributing most to the target logit, strongest first.
    shared : (S,) concepts contributing positively to both logits, by their smaller
        contribution (empty without ``versus``).
    concepts : (P,) the union of ``top`` and ``shared``, the concepts traced below.
    traces : (P, H, W) pixel traces of ``concepts`` on the image (Eq. 12).
    reference_ids : (P, n) indices of each concept's top-activating reference images.
    reference_activations : (P, n) their activations of the concept.
    reference_traces : (P, n, H, W) the concept's pixel trace on each of them.
    frequency : (P,) fraction of the reference images on which the concept is active (near 1:
        an "always-on" concept, App. F).
    layer : the bottleneck layer.
    """

    logits: Tensor
    target: int
    versus: int | None
    contributions: Tensor
    activations: Tensor
    top: Tensor
    shared: Tensor
    concepts: Tensor
    traces: Tensor
    reference_ids: Tensor
    reference_activations: Tensor
    reference_traces: Tensor
    frequency: Tensor
    layer: str

    @property
    def predicted(self) -> int:
        return int(self.logits.argmax())

    def shares(self, which: int = 0) -> Tensor:
        """(K,) each concept's contribution as a fraction of the target (0) or versus (1)
        logit; they sum to 1 because the decomposition is exact (Eq. 9)."""
        return self.contributions[which] / self.logit(which)

    def logit(self, which: int = 0) -> float:
        """The target (0) or versus (1) logit."""
        return float(self.logits[self.target if which == 0 else self.versus])

    def other_share(self, shown: Tensor, which: int = 0) -> float:
        """Share of the logit from every concept not in ``shown`` ("other concepts")."""
        rest = torch.ones_like(self.activations, dtype=torch.bool)
        rest[shown] = False
        return float(self.shares(which)[rest].sum())

    def row(self, concept: int) -> int:
        """Index of ``concept`` in :attr:`concepts` (traces and references)."""
        return int((self.concepts == concept).nonzero()[0, 0])

    def to_json(self, class_names: list[str], reference_names: list[str] | None = None
                ) -> dict[str, Any]:
        """The numbers as plain JSON types (shares in per cent)."""
        def cls(c: int) -> dict[str, Any]:
            return {"index": c, "name": class_names[c], "logit": float(self.logits[c]),
                    "probability": float(self.logits.softmax(0)[c])}

        def concept(k: int) -> dict[str, Any]:
            r = self.row(k)
            entry: dict[str, Any] = {
                "concept": k, "activation": float(self.activations[k]),
                "contribution": float(self.contributions[0, k]),
                "share_percent": 100 * float(self.shares(0)[k]),
                "active_on_references_percent": 100 * float(self.frequency[r])}
            if self.versus is not None:
                entry["contribution_versus"] = float(self.contributions[1, k])
                entry["share_versus_percent"] = 100 * float(self.shares(1)[k])
            entry["top_images"] = [
                {"id": reference_names[i] if reference_names else i, "activation": float(a)}
                for i, a in zip(self.reference_ids[r].tolist(),
                                self.reference_activations[r].tolist())]
            return entry

        out: dict[str, Any] = {
            "layer": self.layer, "predicted": cls(self.predicted), "target": cls(self.target),
            "versus": None if self.versus is None else cls(self.versus),
            "top_concepts": [concept(k) for k in self.top.tolist()],
            "other_concepts": {"share_percent": 100 * self.other_share(self.top),
                               "contribution": self.other_share(self.top) * self.logit(0)},
            "residual": self.logit(0) - float(self.contributions[0].sum()),
        }
        if self.versus is not None:
            out["shared_concepts"] = [concept(k) for k in self.shared.tolist()]
            out["other_concepts_versus"] = {"share_percent": 100 * self.other_share(
                self.shared, 1)}
        return out


def explain_image(model: object, image: Tensor, references: Tensor, *,
                  target: int | None = None, versus: int | None = None, top: int = 5,
                  per_concept_images: int = 4, layer: str | None = None,
                  batch_size: int = 64) -> FactExplanation:
    """Explain one image with FaCT's exact concept contributions, traces and references.

    Parameters
    ----------
    model : a :class:`~ierf.fact.FaCT` network or an ``ierf.Model`` wrapping one.
    image : (1, 3, H, W) RGB in [0, 1].
    references : (N, 3, H, W) reference images for each concept's top-activating examples.
    target : the explained class (default: the predicted class).
    versus : a second class for the two-class view (Sec. 6, Fig. 8), e.g. the true class of a
        misclassified image.
    top : concepts shown per class.
    per_concept_images : top-activating reference images per concept.
    """
    fact = as_fact(model)
    fact.check_images(image)
    if len(image) != 1:
        raise IerfError(f"explain_image takes one image shaped (1, 3, H, W), got "
                        f"{tuple(image.shape)}")
    if top < 1 or per_concept_images < 1 or len(references) < 1:
        raise IerfError("top, per_concept_images and the number of reference images must be "
                        "at least 1")
    logits = _forward(fact, image, layer, 1)[0][0]
    n_classes = len(logits)
    target = int(logits.argmax()) if target is None else int(target)
    for name, c in (("target", target), ("versus", versus)):
        if c is not None and not 0 <= c < n_classes:
            raise IerfError(f"{name} class must lie in [0, {n_classes}), got {c}")
    if versus == target:
        raise IerfError(f"versus must differ from the target class {target}")
    classes = [target] if versus is None else [target, versus]
    c = concept_contributions(fact, image, classes=classes, layer=layer)
    contributions, activations = c.contributions[0], c.activations[0]
    K = len(activations)
    top_ids = contributions[0].topk(min(top, K)).indices
    if versus is None:
        shared = top_ids.new_zeros(0)
    else:
        both = contributions.min(0).values
        positive = int((both > 0).sum())
        shared = both.topk(min(top, positive)).indices
    concepts = torch.cat([top_ids, shared[~torch.isin(shared, top_ids)]])
    traces = concept_traces(fact, image, concepts=concepts, layer=c.layer).maps[0]
    ref_act = _forward(fact, references, c.layer, batch_size)[1]
    n = min(per_concept_images, len(references))
    best = ref_act[:, concepts].topk(n, dim=0)  # (n, P)
    ids = best.indices.T.contiguous()
    ref_traces = torch.cat([
        concept_traces(fact, references[ids.flatten()[s:s + batch_size]],
                       concepts=concepts.repeat_interleave(n)[s:s + batch_size, None],
                       layer=c.layer).maps[:, 0]
        for s in range(0, ids.numel(), batch_size)])
    return FactExplanation(logits.detach(), target, versus, contributions.detach(),
                           activations.detach(), top_ids, shared, concepts, traces.detach(),
                           ids, best.values.T.contiguous(),
                           ref_traces.view(len(concepts), n, *ref_traces.shape[-2:]).detach(),
                           (ref_act[:, concepts] > 0).float().mean(0), c.layer)
