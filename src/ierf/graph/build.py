"""Build an Interlayer Concept Graph from a model, one concept basis per layer and images
(IERF Sec. VI; GIG Sec. 3.3, 4.2).

For a chain ``l_1 → … → l_L → output`` every layer's PFVs are encoded once (Eq. 12), then

- **node importance** of every concept of ``l`` for every class: ICAT with ``b = "output"``
  (``S = logit_c``, Sec. VI-A2 / GIG Eq. 7; :func:`ierf.graph.concept_importance` class by
  class) — for ``l_L`` these are also the class edges;
- **edges** ``l_i → l_{i+1}``: :func:`ierf.graph.icat` (Eqs. 13–16);
- **error nodes**. The residual ``R = X − X̂`` of a layer is not on ICAT's path
  ``x̂_0 + α U Vᵀ``; its edge to a target is the exact change of the target's score when it
  is added back, ``S_t(M(X)) − S_t(M(X̂))`` (equal, by completeness, to IG on the residual
  along the straight path ``X̂ → X``), and its importance for class ``c`` is
  ``logit_c(X) − logit_c(X̂)``. With IG the books then balance per target:
  ``S_t(X) − S_t(x̂_0) = Σ_q ICAT(q → t) + error edge − gap`` (``gap`` = IG's completeness
  error, kept on each :class:`~ierf.graph.concept_graph.Edges`). The node also records the
  residual's share ``‖X − X̂‖_F / ‖X‖_F``.

Everything is computed per image and then averaged over images (the data-set-wide graph) or
kept per image (``per_image=True``): a per-image graph is the data-set graph of that one image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Any

import torch
from tqdm.auto import tqdm

from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError, unknown_name
from ierf.graph.concept_graph import OUTPUT, ConceptGraph, Edges, LayerNodes
from ierf.graph.icat import METHODS, alignment_score, icat
from ierf.models.model import Model
from ierf.models.subnetwork import Subnetwork

ERROR_NOTE = ("error node: residual X - X_hat of the Lasso decomposition; its edge to a target "
              "is S_t(M(X)) - S_t(M(X_hat)), its class importance logit_c(X) - logit_c(X_hat), "
              "error_share = ||X - X_hat||_F / ||X||_F (mean over images)")


def build_graph(model: Model, bases: Mapping[str, ConceptBasis], x: torch.Tensor,
                classes: int | Sequence[int] | torch.Tensor | None = None, method: str = "ig",
                *, n_steps: int = 32, rule: str = "gausslegendre",
                internal_batch_size: int | None = None,
                target_batch_size: int | None = None, per_image: bool = False,
                image_ids: Sequence[str] | None = None,
                labels: Mapping[str, Sequence[str]] | None = None, seed: int = 0,
                progress: bool = True) -> ConceptGraph | list[ConceptGraph]:
    """The Interlayer Concept Graph of ``model`` on images ``x`` (Sec. VI).

    Parameters
    ----------
    model : the :class:`ierf.Model` the bases were fitted on.
    bases : layer → :class:`ConceptBasis`, in chain order, input side first; ``"output"`` is
        appended.
    x : images ``(B, 3, H, W)``, normalised as the model expects.
    classes : the class nodes (indices); by default the classes the model predicts on ``x``.
    method : the attribution ``AT`` of Eq. 14 (:data:`ierf.graph.METHODS`; IG by default).
    n_steps, rule, internal_batch_size, target_batch_size, seed : passed to :func:`icat`.
    per_image : return one graph per image instead of the mean over images.
    image_ids : one id per image (``metadata["image_ids"]``); ``"0"``, ``"1"``, ... by default.
    labels : layer → one label per concept; otherwise ``provenance["labels"]`` of the basis,
        otherwise ``"{layer} #{k}"``.
    progress : show a progress bar over the layer pairs.

    Returns
    -------
    A :class:`ConceptGraph` (edges and importances averaged over images), or a list of them
    (one per image) when ``per_image``.
    """
    layers = _check(model, bases, x, method)
    ids = [str(i) for i in range(len(x))] if image_ids is None else [str(i) for i in image_ids]
    if len(ids) != len(x):
        raise IerfError(f"got {len(ids)} image ids for {len(x)} images")
    with torch.no_grad():
        pfvs = model.pfvs(x, layers)
        logits = model(x)
        classes = _classes(model, logits, classes)
        U = {l: bases[l].encode(pfvs[l].vectors) for l in layers}
        X_hat = {l: bases[l].decode(U[l]) for l in layers}
    kw: dict[str, Any] = {"n_steps": n_steps, "rule": rule, "seed": seed,
                          "internal_batch_size": internal_batch_size,
                          "target_batch_size": target_batch_size}
    chain = [*layers, OUTPUT]
    per: dict[str, Any] = {}
    steps = list(pairwise(layers)) + [(a, OUTPUT) for a in layers]
    subs = {(a, b): Subnetwork(model, a, b) for a, b in steps}   # a bad chain fails here
    for a, b in tqdm(steps, desc="ICAT layer pairs", disable=not progress):
        sub = subs[a, b]
        basis_b = None if b == OUTPUT else bases[b]
        targets = classes if b == OUTPUT else None
        U_b = None if b == OUTPUT else U[b]
        out = icat(sub, bases[a], basis_b, pfvs[a], method, targets, U_a=U[a], U_b=U_b,
                   return_convergence_delta=method == "ig", **kw)
        edges, gap = out if method == "ig" else (out, None)
        err = _error_effect(sub, pfvs[a], X_hat[a], basis_b, U_b, targets)
        per[a, b] = (torch.cat([edges, err[:, None]], 1), gap)      # (B, K_a + 1, T)
    meta = _metadata(model, bases, layers, method, kw, classes)
    shares = _error_share(pfvs, X_hat, layers)
    probs = logits.softmax(-1)[:, classes]
    groups = [[i] for i in range(len(x))] if per_image else [list(range(len(x)))]
    graphs = []
    for g in groups:
        nodes = {l: _nodes(l, bases[l], U[l], per[l, OUTPUT][0], shares[l], g, labels)
                 for l in layers}
        edges = [Edges(a, b, per[a, b][0][g].mean(0), method,
                       None if per[a, b][1] is None else per[a, b][1][g].mean(0))
                 for a, b in pairwise(chain)]
        graphs.append(ConceptGraph(
            list(chain), nodes, classes.clone(), [model.class_names[c] for c in classes],
            logits[g][:, classes].mean(0), probs[g].mean(0), edges,
            {**meta, "image_ids": [ids[i] for i in g], "n_images": len(g)}))
    return graphs if per_image else graphs[0]


def _check(model: Model, bases: Mapping[str, ConceptBasis], x: torch.Tensor,
           method: str) -> list[str]:
    """The chain's concept layers, after refusing bad input with one clear line."""
    if not bases:
        raise IerfError("a concept graph needs at least one layer with a concept basis")
    if method not in METHODS:
        raise unknown_name("ICAT method", method, METHODS)
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or len(x) == 0:
        raise IerfError(f"expected a non-empty batch of images (B, 3, H, W), got "
                        f"{getattr(x, 'shape', type(x).__name__)}")
    for layer, basis in bases.items():
        if layer == OUTPUT:
            raise IerfError("'output' is appended to the chain; do not pass a basis for it")
        if not isinstance(basis, ConceptBasis):
            raise IerfError(f"expected a ConceptBasis for layer {layer!r}, got "
                            f"{type(basis).__name__}")
        basis.check(model, layer)
    return list(bases)


def _classes(model: Model, logits: torch.Tensor,
             classes: int | Sequence[int] | torch.Tensor | None) -> torch.Tensor:
    if classes is None:
        return logits.argmax(-1).unique().cpu()
    idx = torch.as_tensor(classes, dtype=torch.long).reshape(-1).cpu()
    n = logits.shape[-1]
    if len(idx) == 0 or idx.min() < 0 or idx.max() >= n:
        raise IerfError(f"unknown class {idx.tolist()[:10]}: {model.name} has {n} classes "
                        f"(0 … {n - 1})")
    if len(idx.unique()) != len(idx):
        raise IerfError(f"classes must be distinct, got {idx.tolist()}")
    return idx


def _error_effect(sub: Subnetwork, pfvs: Any, X_hat: torch.Tensor,
                  basis_b: ConceptBasis | None, U_b: torch.Tensor | None,
                  targets: torch.Tensor | None) -> torch.Tensor:
    """``S_t(M(X)) − S_t(M(X̂))`` (B, T): what adding the residual back does to each target."""
    with torch.no_grad():
        full, recon = sub(pfvs.vectors, pfvs.prefix), sub(X_hat, pfvs.prefix)
        if basis_b is None:
            return full[:, targets] - recon[:, targets]
        V = basis_b.dictionary.to(full)
        offset = basis_b.decode(full.new_zeros(1, basis_b.n_concepts))[0]
        return (alignment_score(full, U_b, V, None, offset)
                - alignment_score(recon, U_b, V, None, offset))


def _error_share(pfvs: Mapping[str, Any], X_hat: Mapping[str, torch.Tensor],
                 layers: Sequence[str]) -> dict[str, torch.Tensor]:
    """``‖X − X̂‖_F / ‖X‖_F`` per image (B,) for every layer."""
    out = {}
    for l in layers:
        X = pfvs[l].vectors
        out[l] = (X - X_hat[l]).flatten(1).norm(dim=1) / X.flatten(1).norm(dim=1).clamp_min(1e-12)
    return out


def _nodes(layer: str, basis: ConceptBasis, U: torch.Tensor, to_output: torch.Tensor,
           share: torch.Tensor, images: list[int],
           labels: Mapping[str, Sequence[str]] | None) -> LayerNodes:
    """A layer's nodes averaged over ``images``; ``to_output`` (B, K + 1, n_classes)."""
    K = basis.n_concepts
    names = (labels or {}).get(layer) or basis.provenance.get("labels") or \
        [f"{layer} #{k}" for k in range(K)]
    if len(names) != K:
        raise IerfError(f"layer {layer!r} has {K} concepts but {len(names)} labels")
    imp = to_output[images].mean(0)
    u = U[images]
    return LayerNodes(layer, torch.arange(K), [str(n) for n in names], imp[:-1],
                      u.mean((0, 1)), (u != 0).float().mean((0, 1)),
                      float(share[images].mean()), imp[-1])


def _metadata(model: Model, bases: Mapping[str, ConceptBasis], layers: Sequence[str],
              method: str, settings: Mapping[str, Any], classes: torch.Tensor
              ) -> dict[str, Any]:
    any_basis = bases[layers[0]]
    return {"model": model.name, "fingerprint": any_basis.fingerprint,
            "layers": [*layers, OUTPUT], "method": method,
            "settings": {k: v for k, v in settings.items() if v is not None},
            "classes": classes.tolist(),
            "bases": {l: {"extractor": type(bases[l].extractor).__name__,
                          "n_concepts": bases[l].n_concepts, "tokens": bases[l].tokens,
                          "path": bases[l].provenance.get("path"), "digest": bases[l].digest(),
                          "provenance": bases[l].provenance} for l in layers},
            "aggregation": "mean over images", "error_node": ERROR_NOTE}
