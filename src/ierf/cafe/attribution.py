"""Latent iERFs (IERF Eq. 10): the attribution ``A(p | z_k, I)`` of input pixels to a latent.

One call grounds many (latent, image) pairs: image ``i`` of ``x`` explains its own latent
(:class:`~ierf.cafe.latents.PairTarget`), so each method runs one batched pass.

========================  ==========================================================
``attnlrp`` (default)     AttnLRP (Achtibat et al. 2024), the paper's choice (Sec. V-B)
``srd``                   SRD with frozen attention weights and LayerNorm σ (Sec. IV)
``integrated-gradients``  Captum's IG from a baseline input (a blank), Σ over colours
``gradient``              Captum's saliency, max over colours of |∂z/∂x|
``grad-x-input``          Captum's input × gradient, Σ over colours
``kernelshap``            KernelSHAP over the ViT's patches (:mod:`ierf.cafe.kernelshap`),
                          absent patches = the baseline; each patch's value spread evenly
                          over its pixels
========================  ==========================================================

IG and KernelSHAP need a reference input. By default it is the insertion test's blank
(:mod:`ierf.cafe.blanks`, default ``"zero"``), so "no evidence" is the same image for the
attributor and for the test that scores it: IG's completeness then reads
``Σ_p A(p) ≈ z_k(I) − z_k(blank)``, the rise the insertion curve has to make.

The activation-ranking baseline is not a pixel map: see :func:`ierf.cafe.insertion.patch_scores`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ierf.cafe.blanks import blank_canvas, model_grid
from ierf.cafe.kernelshap import kernel_shap
from ierf.cafe.latents import LatentPairs, PairTarget, check_basis, check_latents
from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError, unknown_name
from ierf.models.hooks import forward_until
from ierf.models.model import Model
from ierf.models.pfv import to_pfvs

METHODS = ("attnlrp", "srd", "integrated-gradients", "gradient", "grad-x-input", "kernelshap")
REFERENCE_METHODS = ("integrated-gradients", "kernelshap")
"""The methods whose maps depend on a reference input (``baselines``)."""
CAPTUM = {"integrated-gradients": "IntegratedGradients", "gradient": "Saliency",
          "grad-x-input": "InputXGradient"}


def latent_score(model: Model, target: PairTarget) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x ↦ z(x)`` of ``target``: the network run only up to its layer, one score per image.
    Batches that tile the pairs step by step (Captum's IG paths) are matched by tiling."""
    module = model.module(target.layer)

    def score(x: torch.Tensor) -> torch.Tensor:
        outs: list[torch.Tensor] = []
        forward_until(model.net, x, module, outs.append)
        return target.scalar(to_pfvs(outs[0], model.num_prefix_tokens, model.patch_grid))

    return score


def latent_ierfs(model: Model, basis: ConceptBasis, x: torch.Tensor, pairs: LatentPairs,
                 method: str = "attnlrp", *,
                 baselines: str | torch.Tensor | float | None = "zero",
                 n_steps: int = 16, internal_batch_size: int = 64, batch_size: int = 64,
                 n_samples: int = 256) -> torch.Tensor:
    """``(P, H, W)`` iERF of each pair's latent on its image ``x[pairs.image]`` (Eq. 10).

    Parameters
    ----------
    model, basis : the model and an SAE basis of one of its layers (checked).
    x : (B, 3, H, W) images the pairs index.
    pairs : from :func:`~ierf.cafe.latents.select_pairs`; its readout decides the scalar.
    method : one of :data:`METHODS`.
    baselines : the reference input of integrated gradients and KernelSHAP: a blank of
        :data:`~ierf.cafe.blanks.BLANKS` made from ``x`` as the insertion test makes it
        (default ``"zero"``: zeros after normalisation, i.e. the normalisation mean colour;
        ``"mean"`` averages over all of ``x``), a number, or a (B, 3, H, W) tensor indexed
        like ``x``.
    n_steps, internal_batch_size : integrated gradients' path points and images per pass.
    batch_size : pairs per batched pass (memory grows with it).
    n_samples : KernelSHAP's coalitions per pair (all of them, exact, when the patch grid has
        at most ``log2(n_samples + 2)`` patches).
    """
    if method not in METHODS:
        raise unknown_name("CAFE attribution method", method, METHODS)
    check_basis(model, basis)
    check_latents(basis, pairs.latent)
    if len(pairs) == 0:
        raise IerfError("no (latent, image) pairs to ground: no latent is active on these "
                        "images; give more images or other latents")
    if isinstance(baselines, str):                   # a blank; unknown names raise here
        canvas = blank_canvas(x, baselines, model_grid(model))
        baselines = canvas if method in REFERENCE_METHODS else None
    if isinstance(baselines, torch.Tensor) and baselines.dim() == 4:
        baselines = baselines[pairs.image]
    maps = []
    for i in range(0, len(pairs), batch_size):
        rows = slice(i, i + batch_size)
        base = baselines[rows] if isinstance(baselines, torch.Tensor) and \
            baselines.dim() == 4 else baselines
        maps.append(_maps(model, basis, x[pairs.image[rows]], pairs[rows].target(basis),
                          method, base, n_steps, internal_batch_size, n_samples))
    return torch.cat(maps)


def _maps(model: Model, basis: ConceptBasis, x: torch.Tensor, target: PairTarget,
          method: str, baselines: torch.Tensor | float | None, n_steps: int,
          internal_batch_size: int, n_samples: int) -> torch.Tensor:
    """One batched pass of ``method``: image ``i`` of ``x`` explains pair ``i``."""
    if method == "attnlrp":
        from ierf.local.attnlrp import AttnLRP
        return AttnLRP(model).attribute(x, target)
    if method == "srd":
        from ierf.local.srd import SRD
        return SRD(model, layer=basis.layer).attribute(x, target)
    if method == "kernelshap":
        grid = model.patch_grid
        if grid is None:
            raise IerfError("kernelshap plays the ViT's patches; this model has no patch grid")
        phi = kernel_shap(latent_score(model, target), x.detach(), baselines, grid,
                          n_samples=n_samples, batch_size=internal_batch_size)
        area = (x.shape[-2] // grid[0]) * (x.shape[-1] // grid[1])
        return F.interpolate(phi[:, None] / area, size=x.shape[-2:], mode="nearest")[:, 0]
    captum = importlib.import_module("captum.attr")
    attributor = getattr(captum, CAPTUM[method])(latent_score(model, target))
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        if method == "integrated-gradients":
            attr = attributor.attribute(x, baselines=baselines, n_steps=n_steps,
                                        internal_batch_size=internal_batch_size)
        elif method == "gradient":
            return attributor.attribute(x, abs=True).amax(1).detach()
        else:
            attr = attributor.attribute(x)
    return attr.sum(1).detach()
