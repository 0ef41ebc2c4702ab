"""Fit a concept extractor by name, and find the ``μ_BN`` that centres a layer's PFVs.

:func:`fit_concepts` maps a method name to its extractor (GIG Sec. 3.2, App. B and F; IERF Sec. VI-A, Table III), applies the
default ``K = 8 C`` and, for bisecting k-means, the centring by ``μ_BN`` (GIG Eq. 8–9).
:func:`fit_basis` is the entry point behind ``ierf concepts fit``: it fits on an atlas layer
and binds the result to the atlas' model and layer as a :class:`ConceptBasis`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ierf.concepts.basis import ConceptBasis
from ierf.concepts.centering import bn_shift
from ierf.concepts.extractors import (
    BiasFreeTopKSAE,
    BisectingSphericalKMeans,
    ConceptExtractor,
    DictionaryLearner,
    MatryoshkaSAE,
    SAEBase,
    SparseAutoencoder,
    TopKSAE,
)
from ierf.concepts.extractors.base import check_pfvs, default_n_concepts
from ierf.concepts.extractors.minibatch_kmeans import MiniBatchSphericalKMeans
from ierf.errors import IerfError, unknown_name
from ierf.models.hooks import forward_hooks
from ierf.models.model import Model
from ierf.registry import Registry

METHODS: Registry[type[ConceptExtractor]] = Registry("concept method", {
    "kmeans": BisectingSphericalKMeans,
    "minibatch-kmeans": MiniBatchSphericalKMeans,
    "dictionary": DictionaryLearner,
    "sae": SparseAutoencoder,
    "topk-sae": TopKSAE,
    "matryoshka-sae": MatryoshkaSAE,
    "bias-free-topk-sae": BiasFreeTopKSAE,
})
"""Method names accepted by :func:`fit_concepts` and the CLI."""

#: keyword arguments of :meth:`SAEBase.fit` (the rest go to the SAE's constructor)
SAE_FIT_OPTIONS = ("epochs", "batch_size", "lr", "progress")
#: SAE training by default: at least this many epochs and this many optimiser steps
MIN_EPOCHS, MIN_STEPS = 20, 2000


def default_epochs(n_pfvs: int, batch_size: int = 256) -> int:
    """Epochs giving an SAE at least :data:`MIN_STEPS` Adam steps and :data:`MIN_EPOCHS`
    epochs: small atlases (a few hundred PFVs: one step an epoch) would otherwise stay
    untrained, large ones are not trained longer than needed."""
    steps_per_epoch = max(1, -(-n_pfvs // batch_size))
    return max(MIN_EPOCHS, -(-MIN_STEPS // steps_per_epoch))


def fit_concepts(pfvs: torch.Tensor, method: str = "kmeans", n_concepts: int | None = None,
                 center: torch.Tensor | None = None, **opts: Any) -> ConceptExtractor:
    """Learn a concept dictionary ``V (C, K)`` from PFVs ``X (N, C)`` with the named method.

    Parameters
    ----------
    pfvs : (N, C) PFVs of one layer (the atlas samples, GIG Sec. 3.1).
    method : one of :data:`METHODS`: ``kmeans`` (bisecting spherical k-means, GIG App. B),
        ``dictionary`` (scikit-learn dictionary learning), ``sae`` (ReLU SAE, GIG Eq. 11),
        ``topk-sae``, ``matryoshka-sae``, ``bias-free-topk-sae``.
    n_concepts : ``K``; ``None`` → ``8 C`` (IERF Sec. VI-A1). k-means needs ``K ≤ N``.
    center : ``μ_BN`` (C,) of GIG Eq. 8, subtracted before clustering and added back on
        decoding (Eq. 9); only ``kmeans`` uses it — SAEs learn their own decoder bias and
        dictionary learning fits the raw PFVs. See :func:`layer_center`.
    **opts : extractor options (e.g. ``alpha``, ``encoding`` for k-means, ``k`` for TopK
        SAEs); for SAEs also the training options ``epochs`` (default
        :func:`default_epochs`), ``batch_size``, ``lr``, ``progress`` of :meth:`SAEBase.fit`.

    Returns
    -------
    The fitted extractor (``get_dictionary()`` gives ``V``).
    """
    cls = METHODS[method]
    X = check_pfvs(pfvs)
    if center is not None and cls is not BisectingSphericalKMeans:
        raise IerfError(f"center (μ_BN) applies to 'kmeans' only, not {method!r}; "
                        "leave it out for the other methods")
    if cls is BisectingSphericalKMeans:
        k = default_n_concepts(X.shape[1], n_concepts)
        if k > len(X):
            raise IerfError(f"k-means cannot find {k} concepts in {len(X)} PFVs; pass "
                            f"n_concepts <= {len(X)} or sample more PFVs")
        return cls(n_concepts, center=center, **opts).fit(X)
    if issubclass(cls, SAEBase):
        fit_opts = {name: opts.pop(name) for name in SAE_FIT_OPTIONS if name in opts}
        if fit_opts.get("epochs") is None:
            fit_opts["epochs"] = default_epochs(len(X), fit_opts.get("batch_size", 256))
        sae = cls(X.shape[1], n_concepts, **opts).to(X.device)
        return sae.fit(X, **fit_opts)
    return cls(n_concepts, **opts).fit(X)


def fit_basis(atlas: object, layer: str, method: str = "kmeans", n_concepts: int | None = None,
              center: bool = True, device: str | torch.device = "cpu",
              **opts: Any) -> ConceptBasis:
    """Fit ``method`` on the PFVs of ``layer`` in ``atlas`` (an :class:`ierf.atlas.Atlas`) and
    bind it to the atlas' model and layer.

    ``center``: for k-means, centre by the feeding BatchNorm's ``μ_BN`` (GIG Eq. 8) where the
    layer has one. ``opts`` go to :func:`fit_concepts` and are recorded in the provenance.
    """
    if layer not in atlas.layers:
        raise unknown_name("atlas layer", layer, atlas.layers)
    model = atlas.model()
    X = atlas.pfvs(layer).to(device)
    mu = layer_center(model, layer) if center and method == "kmeans" else None
    extractor = fit_concepts(X, method, n_concepts,
                             center=None if mu is None else mu.to(device), **opts)
    settings = {k: v for k, v in opts.items() if k != "progress"}
    return ConceptBasis.bind(extractor, model, layer, tokens="patch",
                             atlas=str(atlas.path.resolve()),
                             method=method, n_pfvs=len(X), centred=mu is not None,
                             options=settings)


def feeding_batchnorm(model: Model, layer: str) -> nn.modules.batchnorm._BatchNorm | None:
    """The BatchNorm whose shift ``μ_BN`` centres ``layer``'s PFVs, or ``None``.

    ``layer`` itself if it is a BatchNorm; otherwise the last BatchNorm, in execution order,
    inside ``layer``'s module whose width matches the layer's channels (traced on zeros of
    the model's input size). For a residual block that is the last BN of the residual
    branch when the shortcut runs first (torchvision ``BasicBlock``-style, timm blocks);
    where the shortcut's BN runs last, pass ``center`` to :func:`fit_concepts` yourself.
    """
    module = model.module(layer)
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        return module
    if model.input_size is None:
        raise IerfError("finding the BatchNorm of a layer needs the model's input size; "
                        "use ierf.load_model or pass center=bn_shift(bn) yourself")
    order: list[nn.modules.batchnorm._BatchNorm] = []
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    with forward_hooks((m, lambda m, _i, _o: order.append(m)) for m in bns):
        pfvs = model.pfvs(torch.zeros(1, *model.input_size, device=model.device), layer)[layer]
    width = pfvs.vectors.shape[-1]
    matching = [bn for bn in order if bn.num_features == width]
    return matching[-1] if matching else None


def layer_center(model: Model, layer: str) -> torch.Tensor | None:
    """``μ_BN`` (GIG Eq. 8) of the BatchNorm feeding ``layer`` (:func:`feeding_batchnorm`),
    or ``None`` when the layer has none (ViTs, LayerNorm models)."""
    bn = feeding_batchnorm(model, layer)
    return None if bn is None else bn_shift(bn)
