"""Ground truth for the Interlayer Concept Graph on the synthetic benchmark (IERF Sec. VI;
GIG Sec. 3.3 and 4.2).

The benchmark (:mod:`ierf.data.synthetic`) knows, per pixel, which key part, colour, shape
and texture is drawn there, and every class is a pair of shared parts. That is enough to
check a concept graph against ground truth:

1. **Label the concepts by their iERFs** (the graph's nodes are PFV–iERF bundles, Sec. VI /
   GIG Sec. 3.1). The iERF mass of concept ``q`` on an image is ``Σ_p w_pq · iERF_p``, the
   iERFs of the layer's PFVs weighted by their (positive) Lasso coefficients ``w_pq = u_pq⁺``
   (Eq. 12). SRD and the other iERF engines are linear in the starting relevance, so this
   sum is *one* backward pass seeded with relevance ``w_pq`` at position ``p``
   (:func:`concept_ierfs`), not one per PFV. The positive part of that map, histogrammed
   over each label map, gives every concept a distribution over parts / colours / shapes /
   textures, its dominant value and the purity of it (:func:`concept_labels`).
2. **(a) class nodes**: the top-``k`` parents of a class node (concepts ranked by their class
   relevance ``Σ_i AT(u_iq, logit_c)``, Sec. VI-A2 / GIG Eq. 7) should be concepts of that
   class's two parts (:func:`class_parent_precision`).
3. **(b) part concepts**: the strongest ICAT parents (Eq. 14 / GIG Eq. 6) of a part-level
   concept of a later layer should be the colour / shape / texture concepts that make up
   that part in the earlier layer (:func:`part_edge_agreement`).

Each precision comes with its chance level — the expected precision of ``k`` parents drawn
at random without replacement from the same concepts (what a graph with permuted weights
gives on average) — and the standard deviation of that null (hypergeometric), so a result
is read as a z-score; :func:`ground_truth_report` also builds the same graph with
``method="random"`` (i.i.d. edge scores) as a baseline.

Label codes are those of the benchmark's label maps: ``0`` is background (for ``part``:
background *and* distractors), part code ``p + 1`` is ``PART_TYPES[p]``, colour / shape /
texture code ``i`` is ``CONCEPTS[key][i]``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from itertools import pairwise
from typing import Any

import torch
import torch.nn.functional as F

from ierf.concepts.basis import ConceptBasis
from ierf.data.synthetic import CLASS_PARTS, CONCEPTS, MAX_OBJECTS, PART_TYPES
from ierf.errors import IerfError
from ierf.graph.concept_graph import OUTPUT, ConceptGraph
from ierf.models.model import Model
from ierf.targets import ScalarTarget

LABEL_KEYS = ("part", "colour", "shape", "texture")
ATTRIBUTES = ("colour", "shape", "texture")
#: number of codes of every label map of the benchmark (code 0 = background)
N_LABELS: dict[str, int] = {"part": len(PART_TYPES) + 1, "colour": len(CONCEPTS["colour"]),
                            "shape": len(CONCEPTS["shape"]),
                            "texture": len(CONCEPTS["texture"]), "object": MAX_OBJECTS + 1}


def benchmark_class_parts() -> torch.Tensor:
    """(n_classes, 2) part codes (``PART_TYPES`` index + 1) of every benchmark class."""
    return torch.tensor(CLASS_PARTS, dtype=torch.long) + 1


def benchmark_part_attributes() -> torch.Tensor:
    """(n_parts + 1, 3) colour / shape / texture codes of every part code; row 0
    (background) is all zeros."""
    rows = [[0, 0, 0]] + [[CONCEPTS[a].index(p[a]) for a in ATTRIBUTES] for p in PART_TYPES]
    return torch.tensor(rows, dtype=torch.long)


# -- 1. concept labels from iERFs ----------------------------------------------------------

def concept_ierfs(model: Model, basis: ConceptBasis, x: torch.Tensor, engine: Any = None, *,
                  batch_size: int = 16, internal_batch_size: int = 16) -> torch.Tensor:
    """iERF mass of every concept of ``basis`` on images ``x``: (K, B, H, W).

    ``Σ_p u_pq⁺ · iERF_p`` over the positions ``p`` of the basis' layer, ``u`` the Lasso
    coefficients (Eq. 12) and ``iERF_p`` the input relevance of the PFV at ``p`` (Eqs. 1–2).
    The iERF engine (SRD for CNNs, AttnLRP for ViTs, :func:`ierf.atlas.default_engine`) is
    linear in its starting relevance, so each concept costs one (vmapped) backward pass: a
    :func:`relevance_target` whose per-position relevance is exactly ``u_pq⁺``. Images go
    ``batch_size`` at a time, targets ``internal_batch_size`` per vmapped backward (memory
    grows with both).
    """
    if not isinstance(basis, ConceptBasis):
        raise IerfError(f"expected a ConceptBasis, got {type(basis).__name__}")
    if not isinstance(x, torch.Tensor) or x.dim() != 4 or len(x) == 0:
        raise IerfError(f"expected a non-empty batch of images (B, 3, H, W), got "
                        f"{getattr(x, 'shape', type(x).__name__)}")
    layer = basis.layer
    basis.check(model, layer)
    if engine is None:
        from ierf.atlas.build import default_engine
        engine = default_engine(model)
    if batch_size < 1:
        raise IerfError(f"batch_size must be ≥ 1, got {batch_size}")
    maps = []
    for xb in x.split(batch_size):   # image chunks, to bound memory
        with torch.no_grad():
            W = basis.encode(model.pfvs(xb, [layer])[layer].vectors).clamp_min(0)  # (b, N, K)
        targets = [relevance_target(layer, W[..., q]) for q in range(W.shape[-1])]
        maps.append(engine.ierfs(xb, targets, internal_batch_size=internal_batch_size))
    return torch.cat(maps, 1)


def relevance_target(layer: str, weights: torch.Tensor) -> ScalarTarget:
    """A PFV-level target whose starting relevance at position ``p`` of image ``b`` is exactly
    ``weights[b, p]`` (B, N): ``z = Σ_p w_p ⟨v_p, sg(v_p)⟩ / sg(‖v_p‖²)``, so
    ``⟨v_p, ∂z/∂v_p⟩ = w_p`` wherever the PFV is non-zero. Its iERF is ``Σ_p w_p iERF_p``
    (a one-hot ``w`` gives :class:`~ierf.targets.PFVTarget`'s)."""
    if weights.dim() != 2:
        raise IerfError(f"weights must be (B, N) per image and position, got "
                        f"{tuple(weights.shape)}")

    def fn(V: torch.Tensor) -> torch.Tensor:
        if V.shape[:2] != weights.shape:
            raise IerfError(f"weights of shape {tuple(weights.shape)} do not match the PFVs "
                            f"{tuple(V.shape[:2])} of layer {layer!r}")
        norm2 = (V * V).sum(-1, keepdim=True).detach()
        unit = (V * (V / torch.where(norm2 == 0, 1.0, norm2)).detach()).sum(-1)   # (B, N)
        return (weights.to(V) * unit).sum(1)
    return ScalarTarget(layer, fn)


@dataclass
class ConceptLabels:
    """Ground-truth labels of K concepts from the iERF mass they put on each label value.

    Attributes
    ----------
    mass : key → (K, L) positive iERF mass on each code of that label map (code 0 =
        background), summed over images.
    dominant : key → (K,) the non-background code with the most mass (``0`` when a concept
        puts no mass on any labelled pixel).
    purity : key → (K,) the dominant code's share of the non-background mass.
    foreground : key → (K,) the share of the mass on non-background pixels of that map.
    """

    mass: dict[str, torch.Tensor]
    dominant: dict[str, torch.Tensor]
    purity: dict[str, torch.Tensor]
    foreground: dict[str, torch.Tensor]

    @property
    def n_concepts(self) -> int:
        return len(next(iter(self.dominant.values())))

    def summary(self) -> dict[str, dict[str, float]]:
        """Mean purity and foreground share per key (plain floats)."""
        return {k: {"purity": float(self.purity[k].mean()),
                    "foreground": float(self.foreground[k].mean())} for k in self.mass}


def label_mass(maps: torch.Tensor, labels: torch.Tensor, n_labels: int) -> torch.Tensor:
    """Positive mass of maps ``(K, B, h, w)`` on every code of label maps ``(B, H, W)``:
    (K, n_labels). Label maps of a different size are area-pooled (as one-hot) to ``(h, w)``."""
    if maps.dim() != 4 or labels.dim() != 3 or maps.shape[1] != labels.shape[0]:
        raise IerfError(f"expected maps (K, B, h, w) and label maps (B, H, W) of the same "
                        f"batch, got {tuple(maps.shape)} and {tuple(labels.shape)}")
    if labels.dtype.is_floating_point or labels.min() < 0 or labels.max() >= n_labels:
        raise IerfError(f"label codes must be integers in 0..{n_labels - 1}, got "
                        f"{labels.dtype} in {int(labels.min())}..{int(labels.max())}")
    onehot = F.one_hot(labels.long(), n_labels).permute(0, 3, 1, 2).to(maps)   # (B, L, H, W)
    if onehot.shape[-2:] != maps.shape[-2:]:
        onehot = F.adaptive_avg_pool2d(onehot, maps.shape[-2:])
    return torch.einsum("kbhw,blhw->kl", maps.clamp_min(0), onehot)


def concept_labels(maps: torch.Tensor, concept_maps: Mapping[str, torch.Tensor],
                   keys: Sequence[str] = LABEL_KEYS,
                   n_labels: Mapping[str, int] | None = None) -> ConceptLabels:
    """Label every concept by the benchmark's per-pixel labels under its iERF mass.

    Parameters
    ----------
    maps : (K, B, h, w) iERF mass of every concept (:func:`concept_ierfs`).
    concept_maps : key → (B, H, W) integer label maps (``SyntheticBatch.concept_maps``).
    keys : which label maps to use.
    n_labels : key → number of codes; :data:`N_LABELS` (the benchmark's) by default.

    Returns
    -------
    :class:`ConceptLabels`.
    """
    counts = {**N_LABELS, **(n_labels or {})}
    mass, dominant, purity, foreground = {}, {}, {}, {}
    for key in keys:   # a handful of label maps
        if key not in concept_maps:
            raise IerfError(f"no label map {key!r}; have: {', '.join(concept_maps)}")
        labels = concept_maps[key].to(maps.device)
        n = counts.get(key, int(labels.max()) + 1)
        m = label_mass(maps, labels, n)
        fg = m[:, 1:]
        total, fg_total = m.sum(1), fg.sum(1)
        best, arg = fg.max(1)
        mass[key] = m
        dominant[key] = torch.where(fg_total > 0, arg + 1, 0)
        purity[key] = best / fg_total.clamp_min(1e-30)
        foreground[key] = fg_total / total.clamp_min(1e-30)
    return ConceptLabels(mass, dominant, purity, foreground)


# -- 2./3. precision of the graph's parents against ground truth ----------------------------

def _null(matches: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and variance of the mean score of ``k`` of ``n`` candidates drawn without
    replacement, ``matches (T, n)`` the score of every candidate (bool: right or wrong, the
    hypergeometric case): ``E = mean``, ``Var = σ² (n − k) / ((n − 1) k)``."""
    n = matches.shape[1]
    m = matches.float()
    mean = m.mean(1)
    var = m.var(1, correction=0) * (n - k) / max(n - 1, 1) / k
    return mean, var


def _top_precision(scores: torch.Tensor, matches: torch.Tensor, k: int) -> torch.Tensor:
    """Share of the ``k`` highest ``scores (T, n)`` per row that are ``matches (T, n)``."""
    top = scores.topk(k, dim=1).indices
    return matches.float().gather(1, top).mean(1)


def _z(observed: torch.Tensor, chance: torch.Tensor, var: torch.Tensor) -> float:
    sd = float(var.sum().sqrt()) / len(var)
    diff = float(observed.mean() - chance.mean())
    return diff / sd if sd > 0 else (0.0 if diff == 0 else float("inf") * diff)


def _check_k(k: int, n: int, what: str) -> None:
    if not 1 <= k <= n:
        raise IerfError(f"k must be in 1..{n} (the {what}), got {k}")


def class_parent_precision(graph: ConceptGraph, concept_parts: torch.Tensor,
                           class_parts: torch.Tensor, k: int = 3, layer: str | None = None,
                           importance: torch.Tensor | None = None) -> dict[str, Any]:
    """(a) Precision of every class node's top-``k`` parent concepts being concepts of that
    class's parts (IERF Sec. VI-A2, GIG Sec. 4.2).

    A class node's parents are ``layer``'s concepts ranked by their class relevance
    ``Σ_i AT(u_iq, logit_c)`` (``graph.nodes[layer].importance``; for the last concept layer
    these are the class edges), largest first.

    Parameters
    ----------
    graph : the graph; its class nodes are ``graph.classes``.
    concept_parts : (K,) dominant part code of every concept of ``layer``'s *basis* (indexed
        by basis index, so a pruned graph works), e.g. ``concept_labels(...).dominant["part"]``.
    class_parts : (n_model_classes, 2) part codes of every class of the model
        (:func:`benchmark_class_parts`).
    k : parents per class node.
    layer : the concept layer (default: the last one, whose edges go to the classes).
    importance : optional (K_graph, n_graph_classes) scores to rank by instead of the graph's
        (e.g. importance averaged over the images of each class only).

    Returns
    -------
    dict with ``precision`` (mean over class nodes), ``chance`` (expected precision of ``k``
    random parents), ``null_sd`` (its standard deviation over the class nodes' mean),
    ``z`` = (precision − chance) / null_sd, and per-class lists ``per_class``,
    ``chance_per_class``, ``parents`` (basis indices, best first).
    """
    layer = layer or graph.layers[-2]
    if layer == OUTPUT or layer not in graph.nodes:
        raise IerfError(f"no concept layer {layer!r} in this graph; its layers: "
                        f"{', '.join(graph.layers[:-1])}")
    nodes = graph.nodes[layer]
    scores = nodes.importance if importance is None else importance
    if scores.shape != nodes.importance.shape:
        raise IerfError(f"importance must have shape {tuple(nodes.importance.shape)}, got "
                        f"{tuple(scores.shape)}")
    concept_parts = torch.as_tensor(concept_parts).long()
    class_parts = torch.as_tensor(class_parts).long()
    if concept_parts.dim() != 1 or int(nodes.index.max()) >= len(concept_parts):
        raise IerfError(f"concept_parts must be (K,) over the basis of {layer!r} (≥ "
                        f"{int(nodes.index.max()) + 1} concepts), got {tuple(concept_parts.shape)}")
    if class_parts.dim() != 2 or int(graph.classes.max()) >= len(class_parts):
        raise IerfError(f"class_parts must be (n_classes, n_parts) covering class "
                        f"{int(graph.classes.max())}, got {tuple(class_parts.shape)}")
    _check_k(k, len(nodes.index), f"concepts of layer {layer!r}")
    parts = concept_parts[nodes.index]                                   # (K,)
    wanted = class_parts[graph.classes]                                  # (T, 2)
    matches = (parts[None, :, None] == wanted[:, None, :]).any(-1) & (parts[None] > 0)
    precision = _top_precision(scores.T, matches, k)
    chance, var = _null(matches, k)
    top = nodes.index[scores.T.topk(k, dim=1).indices]
    return {"layer": layer, "k": k, "precision": float(precision.mean()),
            "chance": float(chance.mean()), "null_sd": float(var.sum().sqrt()) / len(var),
            "z": _z(precision, chance, var), "per_class": precision.tolist(),
            "chance_per_class": chance.tolist(), "classes": graph.classes.tolist(),
            "parents": top.tolist()}


def part_edge_agreement(graph: ConceptGraph, source: str, target: str,
                        target_parts: torch.Tensor, source_attributes: torch.Tensor,
                        part_attributes: torch.Tensor, k: int = 3,
                        part_level: torch.Tensor | None = None) -> dict[str, Any]:
    """(b) Do part-level concepts of ``target`` draw their strongest ICAT edges (Eq. 14) from
    the colour / shape / texture concepts of ``source`` that make up that part?

    For every part-level target concept ``t`` (dominant part ``P``) its ``k`` parents with
    the largest ICAT weight (the error node left out) are checked attribute by attribute:
    does the parent's dominant colour (shape, texture) equal ``P``'s? ``attributes`` is the
    share of matching (parent, attribute) pairs — the mean of the three, the headline
    number —, ``any`` the share of parents that match at least one attribute.

    Parameters
    ----------
    graph : a graph in which ``source → target`` are consecutive layers.
    target_parts : (K_b,) dominant part code of every concept of ``target``'s basis.
    source_attributes : (K_a, A) dominant attribute codes (colour, shape, texture) of every
        concept of ``source``'s basis.
    part_attributes : (n_part_codes, A) attribute codes of every part code
        (:func:`benchmark_part_attributes`).
    k : parents per target concept.
    part_level : optional (K_b,) bool over ``target``'s basis: which concepts count as
        part-level (default: all with a part label, ``target_parts > 0``).

    Returns
    -------
    dict with, per attribute and for ``attributes`` and ``any``: ``agreement`` (mean over
    the part-level targets), ``chance`` (expected agreement of ``k`` random parents),
    ``null_sd`` (its standard deviation) and ``z`` = (agreement − chance) / null_sd; plus
    ``n_targets`` and ``targets`` (basis indices of the part-level concepts used).
    """
    pairs = [(e.source, e.target) for e in graph.edges]
    if (source, target) not in pairs or target == OUTPUT:
        raise IerfError(f"no concept edges {source!r} → {target!r} in this graph; its "
                        f"consecutive layers: {', '.join(f'{a} → {b}' for a, b in pairs)}")
    edges = graph.edges[pairs.index((source, target))]
    src, tgt = graph.nodes[source].index, graph.nodes[target].index
    target_parts = torch.as_tensor(target_parts).long()
    source_attributes = torch.as_tensor(source_attributes).long()
    part_attributes = torch.as_tensor(part_attributes).long()
    if target_parts.dim() != 1 or int(tgt.max()) >= len(target_parts):
        raise IerfError(f"target_parts must be (K,) over the basis of {target!r}, got "
                        f"{tuple(target_parts.shape)}")
    if source_attributes.dim() != 2 or int(src.max()) >= len(source_attributes):
        raise IerfError(f"source_attributes must be (K, A) over the basis of {source!r}, got "
                        f"{tuple(source_attributes.shape)}")
    if part_attributes.dim() != 2 or part_attributes.shape[1] != source_attributes.shape[1] \
            or int(target_parts.max()) >= len(part_attributes):
        raise IerfError(f"part_attributes must be (n_part_codes, {source_attributes.shape[1]})"
                        f" covering part code {int(target_parts.max())}, got "
                        f"{tuple(part_attributes.shape)}")
    _check_k(k, len(src), f"concepts of layer {source!r}")
    keep = target_parts[tgt] > 0
    if part_level is not None:
        part_level = torch.as_tensor(part_level, dtype=torch.bool)
        if part_level.shape != target_parts.shape:
            raise IerfError(f"part_level must be (K,) = {tuple(target_parts.shape)}, got "
                            f"{tuple(part_level.shape)}")
        keep &= part_level[tgt]
    if not keep.any():
        raise IerfError(f"no part-level concept in layer {target!r} to check")
    W = edges.weights[:-1, keep].T                                       # (T, K_a)
    want = part_attributes[target_parts[tgt[keep]]]                      # (T, A)
    have = source_attributes[src]                                        # (K_a, A)
    per_attr = (have[None] == want[:, None]) & (have[None] > 0)          # (T, K_a, A)
    names = list(ATTRIBUTES) if per_attr.shape[-1] == len(ATTRIBUTES) else \
        [f"attribute{i}" for i in range(per_attr.shape[-1])]
    out: dict[str, Any] = {"source": source, "target": target, "k": k,
                           "n_targets": int(keep.sum()), "targets": tgt[keep].tolist()}
    checks = {**{n: per_attr[..., i] for i, n in enumerate(names)},
              "attributes": per_attr.float().mean(-1), "any": per_attr.any(-1)}
    for name, matches in checks.items():   # a handful of attributes
        agreement = _top_precision(W, matches, k)
        chance, var = _null(matches, k)
        out[name] = {"agreement": float(agreement.mean()), "chance": float(chance.mean()),
                     "null_sd": float(var.sum().sqrt()) / len(var),
                     "z": _z(agreement, chance, var)}
    return out


# -- baselines -------------------------------------------------------------------------------

def permute_weights(graph: ConceptGraph, seed: int = 0) -> ConceptGraph:
    """The same graph with the concept weights into every target shuffled: each column of
    every layer's class importance and of every edge tensor gets its concept rows permuted
    (the error row stays). A null graph whose top-``k`` parents are ``k`` random concepts;
    the last layer's importance keeps equal to its (permuted) class edges."""
    gen = torch.Generator().manual_seed(seed)

    def perm(shape: torch.Size) -> torch.Tensor:
        return torch.rand(shape, generator=gen).argsort(0)

    edges, last = [], graph.layers[-2]
    out_perm = None
    for e in graph.edges:   # one per layer pair
        p = perm(e.weights[:-1].shape).to(e.weights.device)
        out_perm = p if e.target == OUTPUT else out_perm
        edges.append(replace(e, weights=torch.cat([e.weights[:-1].gather(0, p),
                                                   e.weights[-1:]])))
    nodes = {}
    for layer, n in graph.nodes.items():   # one per layer
        p = out_perm if layer == last and out_perm is not None else \
            perm(n.importance.shape).to(n.importance.device)
        nodes[layer] = replace(n, importance=n.importance.gather(0, p))
    return replace(graph, nodes=nodes, edges=edges,
                   metadata={**graph.metadata, "permuted_seed": seed})


def uniform_purity(concept_maps: Mapping[str, torch.Tensor], keys: Sequence[str] = LABEL_KEYS,
                   n_labels: Mapping[str, int] | None = None) -> dict[str, float]:
    """Purity of a concept whose iERF mass were spread evenly over all pixels: the most
    common non-background code's share of the non-background pixels, per label map (the
    floor against which :attr:`ConceptLabels.purity` is read)."""
    counts = {**N_LABELS, **(n_labels or {})}
    out = {}
    for key in keys:   # a handful of label maps
        c = torch.bincount(concept_maps[key].flatten(), minlength=counts[key])[1:].float()
        out[key] = float(c.max() / c.sum().clamp_min(1))
    return out


# -- the benchmark -----------------------------------------------------------------------------

def fit_bases(model: Model, layers: Sequence[str], n_concepts: int = 16, n_images: int = 32,
              seed: int = 0, max_pfvs: int = 4096) -> dict[str, ConceptBasis]:
    """Small bisecting spherical k-means bases (IERF Sec. VI-A1, GIG App. B) of ``layers``,
    fitted on the PFVs of ``n_images`` training-split benchmark images (at most ``max_pfvs``
    PFVs per layer, centred on their mean)."""
    from ierf.concepts import BisectingSphericalKMeans
    from ierf.data.synthetic import generate

    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = model.normalize(generate(n_images, seed=seed, split="train").images).to(model.device)
        pfvs = model.pfvs(x, list(layers))
    bases = {}
    for layer in layers:   # a few layers
        X = pfvs[layer].vectors.flatten(0, 1).cpu()
        X = X[torch.randperm(len(X), generator=gen)[:max_pfvs]]
        km = BisectingSphericalKMeans(n_concepts, center=X.mean(0), n_init=2, max_iter=20,
                                      seed=seed, alpha=0.01, lasso_max_iter=300,
                                      lasso_tol=1e-3).fit(X)
        bases[layer] = ConceptBasis.bind(km, model, layer, source=f"benchmark:{seed}:train",
                                         n_images=n_images, n_pfvs=len(X))
    return bases


def _short(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in ("per_class", "chance_per_class", "parents",
                                                    "targets")}


def ground_truth_report(model: Model, layers: Sequence[str] = ("layer2", "layer3"), *,
                        bases: Mapping[str, ConceptBasis] | None = None, n_concepts: int = 16,
                        n_fit: int = 32, n_images: int = 48, n_steps: int = 8, k: int = 3,
                        method: str = "ig", seed: int = 0, n_permutations: int = 200,
                        random_graph: bool = True, batch_size: int = 16,
                        internal_batch_size: int | None = 64,
                        progress: bool = False) -> dict[str, Any]:
    """Check an Interlayer Concept Graph of ``model`` against the synthetic benchmark's
    ground truth (IERF Sec. VI; GIG Sec. 3.3, 4.2) — what ``ierf bench graph`` prints.

    1. Concept bases of ``layers`` (``bases``, whose keys then are the layers, in chain
       order; or :func:`fit_bases` with ``n_concepts`` on ``n_fit`` training images); the
       graph over ``n_images`` test images with all benchmark classes as class nodes
       (:func:`~ierf.graph.build_graph`, ``method``, ``n_steps``).
    2. Every concept labelled by the part / colour / shape / texture under its iERF mass
       on the same test images (:func:`concept_ierfs`, :func:`concept_labels`).
    3. (a) :func:`class_parent_precision` of every layer's top-``k`` concepts per class;
       (b) :func:`part_edge_agreement` of every consecutive layer pair.
    4. Baselines: the analytic chance level and null sd of each number, ``n_permutations``
       graphs with permuted weights (:func:`permute_weights`: mean, sd and the share at or
       above the observed value), and with ``random_graph`` the graph built with
       ``method="random"``.

    ``batch_size`` (images per iERF pass) and ``internal_batch_size`` ((image, α) rows per
    ICAT pass, :func:`~ierf.graph.icat`) bound the memory.

    Returns
    -------
    A dict of plain numbers and lists: ``settings``, ``labels`` (per layer and label map:
    mean ``purity`` and ``foreground``, per-concept ``dominant`` and ``purities``),
    ``uniform_purity``, ``class_parents`` (per layer), ``part_edges`` (per ``"a->b"``), and
    ``seconds``.
    """
    import time

    from ierf.data.synthetic import generate
    from ierf.graph.build import build_graph

    t0 = time.perf_counter()
    n_classes = len(model.class_names)
    if n_classes != len(CLASS_PARTS):
        raise IerfError(f"the synthetic benchmark has {len(CLASS_PARTS)} classes; "
                        f"{model.name} has {n_classes} (train it on the benchmark, e.g. "
                        f"'toy-resnet')")
    if n_permutations < 0:
        raise IerfError(f"n_permutations must be ≥ 0, got {n_permutations}")
    layers = list(bases) if bases is not None else list(layers)
    if bases is None:
        bases = fit_bases(model, layers, n_concepts, n_fit, seed)
    batch = generate(n_images, seed=seed, split="test")
    x = model.normalize(batch.images).to(model.device)
    labels = {l: concept_labels(concept_ierfs(model, bases[l], x, batch_size=batch_size),
                                batch.concept_maps) for l in layers}
    t_labels = time.perf_counter()
    classes = list(range(n_classes))
    graph = build_graph(model, bases, x, classes, method, n_steps=n_steps, seed=seed,
                        internal_batch_size=internal_batch_size, progress=progress)
    t_graph = time.perf_counter()
    class_parts, part_attrs = benchmark_class_parts(), benchmark_part_attributes()
    attrs = {l: torch.stack([labels[l].dominant[a] for a in ATTRIBUTES], 1) for l in layers}
    pairs = list(pairwise(layers))

    def measure(g: ConceptGraph) -> tuple[dict, dict]:
        a = {l: class_parent_precision(g, labels[l].dominant["part"], class_parts, k, l)
             for l in layers}
        b = {f"{s}->{t}": part_edge_agreement(g, s, t, labels[t].dominant["part"], attrs[s],
                                              part_attrs, k) for s, t in pairs}
        return a, b

    a, b = measure(graph)
    perms = [measure(permute_weights(graph, seed + 1 + i)) for i in range(n_permutations)]
    rand = measure(build_graph(model, bases, x, classes, "random", seed=seed, progress=False)) \
        if random_graph else None

    def null(observed: float, values: list[float]) -> dict[str, float]:
        v = torch.tensor(values, dtype=torch.float64)
        return {"mean": float(v.mean()), "sd": float(v.std()) if len(v) > 1 else 0.0,
                "p": float(((v >= observed - 1e-12).sum() + 1) / (len(v) + 1))}

    class_parents = {}
    for l in layers:
        r = _short(a[l])
        if perms:
            r["permuted"] = null(r["precision"], [p[0][l]["precision"] for p in perms])
        if rand is not None:
            r["random_graph"] = rand[0][l]["precision"]
        class_parents[l] = r
    part_edges = {}
    for key, r in b.items():
        r = _short(r)
        for name in (*ATTRIBUTES, "attributes", "any"):
            if perms:
                r[name]["permuted"] = null(r[name]["agreement"],
                                           [p[1][key][name]["agreement"] for p in perms])
            if rand is not None:
                r[name]["random_graph"] = rand[1][key][name]["agreement"]
        part_edges[key] = r
    return {
        "settings": {"model": model.name, "layers": layers, "n_concepts":
                     {l: bases[l].n_concepts for l in layers}, "n_fit": n_fit,
                     "n_images": n_images, "n_steps": n_steps, "k": k, "method": method,
                     "seed": seed, "n_permutations": n_permutations},
        "labels": {l: {key: {"purity": float(labels[l].purity[key].mean()),
                             "foreground": float(labels[l].foreground[key].mean()),
                             "dominant": labels[l].dominant[key].tolist(),
                             "purities": labels[l].purity[key].tolist()}
                       for key in LABEL_KEYS} for l in layers},
        "uniform_purity": uniform_purity(batch.concept_maps),
        "class_parents": class_parents,
        "part_edges": part_edges,
        "seconds": {"labels": t_labels - t0, "graph": t_graph - t_labels,
                    "total": time.perf_counter() - t0},
    }
