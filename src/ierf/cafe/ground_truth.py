"""Ground truth for CAFE on the synthetic benchmark (IERF Sec. V; :mod:`ierf.data.synthetic`).

On the benchmark we know what should drive a latent. A latent is *for* a part type when its
image-level activation tells images with that part from images without it, and *for* a
class when it tells that class from the others; both are chosen by AUROC on one image set
(no spatial information used) and scored on another.

Its evidence then lies on the part's pixels (``concept_maps["part"] == g + 1``), or on the
class's two key parts (``parts_mask``). The score is the share of a map's positive mass on
that mask, for

- the CAFE iERF of the latent (Eq. 10), and
- the activation-ranking map: the latent's activation on each patch token, spread over the
  token's pixels — for a CLS latent there is none, and the ranking is uniform (chance);

against chance, the mask's share of the image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ierf.cafe.attribution import latent_ierfs
from ierf.cafe.blanks import model_grid
from ierf.cafe.insertion import patch_scores
from ierf.cafe.latents import (
    LatentPairs,
    latent_activations,
    readout_values,
    token_positions,
)
from ierf.concepts.basis import ConceptBasis
from ierf.data.synthetic import CLASS_PARTS, PART_TYPES, SyntheticBatch
from ierf.errors import IerfError
from ierf.models.model import Model

KINDS = ("part", "class")


def part_presence(labels: torch.Tensor) -> torch.Tensor:
    """``(B, G)`` bool: image ``b`` shows part type ``g`` (its class is made of two)."""
    pairs = torch.tensor(CLASS_PARTS, device=labels.device)[labels]          # (B, 2)
    g = torch.arange(len(PART_TYPES), device=labels.device)
    return (pairs[:, :, None] == g).any(1)


def class_presence(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """``(B, n_classes)`` one-hot bool of the labels."""
    return F.one_hot(labels, n_classes).bool()


def auroc(values: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """``(K, G)`` area under the ROC curve of each latent's ``(B, K)`` values for each
    ``(B, G)`` boolean grouping (Mann–Whitney U with tied values given their mean rank)."""
    v = values.T.double().contiguous()                                        # (K, B)
    s = v.sort(1).values.contiguous()
    left = torch.searchsorted(s, v, right=False)
    right = torch.searchsorted(s, v, right=True)
    rank = (left + right + 1).double() / 2                                            # 1-based
    g = groups.double()
    n_pos = g.sum(0)                                                          # (G,)
    n_neg = g.shape[0] - n_pos
    u = rank @ g - n_pos * (n_pos + 1) / 2
    return (u / (n_pos * n_neg)).float()


def token_map(token_values: torch.Tensor, grid: tuple[int, int], size: tuple[int, int]
              ) -> torch.Tensor:
    """``(P, N)`` per-token values → ``(P, H, W)`` map, each token's value over its pixels."""
    maps = token_values.reshape(-1, 1, *grid).float()
    return F.interpolate(maps, size=size, mode="nearest")[:, 0]


def mass_on_mask(maps: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """``(P,)`` share of each ``(P, H, W)`` map's positive mass inside ``(P, H, W)`` masks
    (NaN where a map has no positive mass)."""
    pos = maps.clamp_min(0)
    total = pos.flatten(1).sum(1)
    inside = (pos * masks).flatten(1).sum(1)
    return torch.where(total > 0, inside / total.clamp_min(1e-30), float("nan"))


def chance(masks: torch.Tensor) -> torch.Tensor:
    """``(P,)`` the masks' share of the image: the mass a uniform map puts on them."""
    return masks.flatten(1).float().mean(1)


def paired_summary(a: torch.Tensor, b: torch.Tensor) -> dict[str, float]:
    """Mean of ``a``, of ``b``, of ``a − b`` and the standard error of ``a − b`` over the
    pairs where both are finite, and their number."""
    ok = torch.isfinite(a) & torch.isfinite(b)
    d = (a - b)[ok].double()
    n = int(ok.sum())
    return {"a": a[ok].mean().item(), "b": b[ok].mean().item(), "diff": d.mean().item(),
            "se": (d.std() / n ** 0.5).item() if n > 1 else float("nan"), "n": n}


def groups_of(batch: SyntheticBatch, kind: str) -> torch.Tensor:
    """``(B, G)`` bool: which part types (``kind="part"``) or class each image shows."""
    if kind == "part":
        return part_presence(batch.labels)
    return class_presence(batch.labels, len(CLASS_PARTS))


def known_latents(values: torch.Tensor, groups: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The latent with the highest AUROC for each group, and that AUROC: ``(G,)`` each."""
    best = auroc(values, groups).max(0)
    return best.indices, best.values


def evidence_pairs(values: torch.Tensor, firing: torch.Tensor, groups: torch.Tensor,
                   latents: torch.Tensor, per_group: int, readout: str = "peak"
                   ) -> tuple[LatentPairs, torch.Tensor]:
    """For each group ``g`` and its latent ``latents[g]``: the ``per_group`` images of that
    group on which the latent is largest (where it fires). Returns the pairs and ``(P,)``
    group of each."""
    v = torch.where(groups, values[:, latents], float("-inf"))                # (B, G)
    top, image = v.topk(min(per_group, v.shape[0]), dim=0)                    # (n, G)
    keep = (top > 0).T.reshape(-1)
    group = torch.arange(len(latents)).repeat_interleave(top.shape[0])
    image = image.T.reshape(-1)
    latent = latents.repeat_interleave(top.shape[0])
    position = firing[:, latents].T.gather(1, image.reshape(len(latents), -1)).reshape(-1)
    pairs = LatentPairs(image[keep], latent[keep], position[keep], top.T.reshape(-1)[keep],
                        readout)
    return pairs, group[keep]


def evidence_masks(batch: SyntheticBatch, image: torch.Tensor, group: torch.Tensor,
                   kind: str) -> torch.Tensor:
    """``(P, H, W)`` bool: the pixels of part type ``group`` (``kind="part"``), or of the
    class's two key parts (``kind="class"``), in each pair's image."""
    if kind == "part":
        return batch.concept_maps["part"][image] == (group + 1)[:, None, None]
    return batch.parts_mask[image]


def ground_truth_scores(model: Model, basis: ConceptBasis, x: torch.Tensor,
                        pairs: LatentPairs, masks: torch.Tensor, method: str = "attnlrp"
                        ) -> dict[str, torch.Tensor]:
    """``(P,)`` mass on the evidence masks of the CAFE iERF (``ierf``), of the activation
    map (``activation``; chance for a CLS latent) and of a uniform map (``chance``)."""
    maps = latent_ierfs(model, basis, x, pairs, method)
    base = chance(masks)
    if basis.tokens == "cls":
        act = base.clone()
    else:
        tokens = patch_scores(model, basis, x, pairs, "activation")
        act = mass_on_mask(token_map(tokens, model_grid(model, basis.layer), tuple(x.shape[-2:])), masks)
        act = torch.where(pairs.is_cls, base, act)
    return {"ierf": mass_on_mask(maps, masks), "activation": act, "chance": base}


def study(model: Model, basis: ConceptBasis, selection: SyntheticBatch,
          evaluation: SyntheticBatch, kind: str = "part", per_group: int = 4,
          method: str = "attnlrp", readout: str = "peak") -> dict[str, torch.Tensor]:
    """The whole ground-truth check: latents chosen by AUROC on ``selection`` (one per part
    type or class), scored on ``evaluation`` (:func:`ground_truth_scores`). Returns the
    chosen ``latents`` and their ``auroc`` (G,), the pairs' ``group`` and the scores (P,)."""
    if kind not in KINDS:
        raise IerfError(f"kind must be one of {KINDS}, got {kind!r}")
    xs, xe = model.normalize(selection.images), model.normalize(evaluation.images)
    positions = token_positions(basis, model.pfvs(xs[:1], basis.layer)[basis.layer])
    values, _ = readout_values(latent_activations(model, basis, xs), positions, readout)
    latents, aurocs = known_latents(values, groups_of(selection, kind))
    values, firing = readout_values(latent_activations(model, basis, xe), positions, readout)
    pairs, group = evidence_pairs(values, firing, groups_of(evaluation, kind), latents,
                                  per_group, readout)
    if len(pairs) == 0:
        raise IerfError("none of the chosen latents fires on the evaluation images; give more")
    masks = evidence_masks(evaluation, pairs.image, group, kind)
    return {"latents": latents, "auroc": aurocs, "group": group,
            **ground_truth_scores(model, basis, xe, pairs, masks, method)}
