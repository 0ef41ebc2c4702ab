"""The C2-score benchmark behind ``ierf bench c2`` (FaCT Sec. 4 and 5.2, Fig. 4): every concept
method of ierf scored on the same images with the same feature model.

A method is a :class:`ConceptSource`: each concept's presence on each image (Eq. 13, its
activation summed over positions) and its input attribution map on chosen images.

========================  ==================================================================
``fact``                  ``fact-toy``'s bottleneck concepts, exact pixel traces (Eqs. 10–12)
``bcos-channels``         the channels of the same layer (the bottleneck's input), traced the
                          same way (:func:`channel_traces`)
``kmeans``, ``topk-sae``  post-hoc concepts fitted on ``toy-resnet``'s PFV–iERF atlas,
                          attributed by their iERFs: SRD from the concept's coefficient map
                          (as :func:`ierf.graph.routes.locate_nodes`)
``cafe``                  ``toy-vit``'s SAE latents (``toy-vit-sae``), AttnLRP latent iERFs
                          summed over tokens (CAFE Eq. 10)
``random``                random concepts: random presences, random ``max(U, t)`` maps
========================  ==================================================================
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError
from ierf.metrics.c2 import C2Result, C2Score, random_maps
from ierf.models.model import Model

METHODS = ("fact", "bcos-channels", "kmeans", "topk-sae", "cafe", "random")
POSTHOC = ("kmeans", "topk-sae")
Features = Callable[[Tensor, Tensor], Tensor]
"""``(images (B, 3, H, W) in [0, 1], image indices (B,)) → features (B, D, H, W)``."""


class ConceptSource(Protocol):
    """One concept method: presences on images and attribution maps of chosen concepts."""

    label: str
    detail: str
    n_concepts: int

    def presence(self, images: Tensor, index: Tensor) -> Tensor:
        """(B, K) presence of every concept on images (B, 3, H, W) in [0, 1]."""
        ...

    def maps(self, images: Tensor, index: Tensor, concepts: Tensor, valid: Tensor) -> Tensor:
        """(B, M, H, W) attribution of concept ``concepts[b, m]`` on image ``b`` (zeros where
        ``valid`` is False)."""
        ...


def _summed(t: Tensor) -> Tensor:
    """(B, K, h, w) maps or (B, N, K) tokens → (B, K) sums over positions."""
    return t.flatten(2).sum(-1) if t.dim() == 4 else t.sum(1)


def channel_traces(model: object, images: Tensor, channels: Tensor, layer: str | None = None
                   ) -> Tensor:
    """Pixel traces (B, M, H, W) of B-cos channels ``channels`` (B, M) of a FaCT model's
    bottleneck layer output ``h`` (the bottleneck's input): in explanation mode
    ``Σ_{h,w} h_c = Σ_pixels W_c(x) ⊙ x`` exactly (FaCT Eqs. 10–12 applied to a channel)."""
    from ierf.fact import as_fact, encode_input, explanation_mode

    fact = as_fact(model)
    layer = fact.resolve(layer) if layer is not None else fact.layers[0]
    with explanation_mode(fact), torch.enable_grad(), fact.recording() as rec:
        x6 = encode_input(fact.check_images(images)).detach().requires_grad_(True)
        fact.forward_encoded(x6)
        h = rec.features[layer]
        select = F.one_hot(channels.T.to(h.device), h.shape[1]).to(h.dtype)  # (M, B, C)
        select = select[..., None, None].expand(channels.shape[1], *h.shape)
        (g,) = torch.autograd.grad(h, x6, select, is_grads_batched=True)
    return (g * x6.detach()).sum(2).transpose(0, 1)


@dataclass
class FactConcepts:
    """FaCT concepts (``bcos-channels``: the channels feeding the bottleneck instead)."""

    model: Model
    channels: bool = False

    def __post_init__(self) -> None:
        from ierf.fact import as_fact

        self.fact = as_fact(self.model)
        self.layer = self.fact.layers[0]
        b = self.fact.bottleneck(self.layer)
        self.n_concepts = b.n_features if self.channels else b.n_concepts
        self.label = "bcos-channels" if self.channels else "fact"
        what = "channels" if self.channels else "bottleneck concepts"
        self.detail = f"{self.model.name} · {self.layer} {what} · pixel traces (Eq. 12)"

    @torch.no_grad()
    def presence(self, images: Tensor, index: Tensor) -> Tensor:
        with self.fact.recording() as rec:
            self.fact(images)
        return _summed((rec.features if self.channels else rec.codes)[self.layer])

    def maps(self, images: Tensor, index: Tensor, concepts: Tensor, valid: Tensor) -> Tensor:
        if self.channels:
            return channel_traces(self.model, images, concepts, self.layer)
        from ierf.fact import concept_traces

        return concept_traces(self.model, images, concepts, self.layer).maps


@dataclass
class BasisConcepts:
    """Post-hoc concepts of a patch-token basis, attributed by SRD iERFs of their coefficient
    maps: ``Σ_p max(u_pk, 0) · iERF(PFV_p)`` (IERF Eqs. 4–6, 12)."""

    model: Model
    basis: ConceptBasis
    label: str

    def __post_init__(self) -> None:
        from ierf.local.srd import SRD

        self.basis.check(self.model)
        self.engine = SRD(self.model)
        self.n_concepts = self.basis.n_concepts
        self.detail = f"{self.model.name} · {self.basis.layer} · SRD iERF of coefficient map"
        self._codes_of: dict[tuple[int, ...], Tensor] = {}  # the Lasso runs once per chunk

    @torch.no_grad()
    def _codes(self, images: Tensor, index: Tensor) -> Tensor:
        key = tuple(index.tolist())
        if key not in self._codes_of:
            x = self.model.normalize(images)
            self._codes_of[key] = self.basis.encode(
                self.model.pfvs(x, self.basis.layer)[self.basis.layer].vectors)
        return self._codes_of[key]

    def presence(self, images: Tensor, index: Tensor) -> Tensor:
        return self._codes(images, index).sum(1)

    def maps(self, images: Tensor, index: Tensor, concepts: Tensor, valid: Tensor) -> Tensor:
        from ierf.graph.routes import WeightedPFVTarget

        U = self._codes(images, index)                                       # (B, N, K)
        W = U.gather(2, concepts[:, None, :].expand(-1, U.shape[1], -1)).clamp_min(0)
        targets = [WeightedPFVTarget(self.basis.layer, W[:, :, m]) for m in range(W.shape[2])]
        return self.engine.ierfs(self.model.normalize(images), targets).transpose(0, 1)


@dataclass
class LatentConcepts:
    """CAFE: SAE latents on a ViT's patch tokens, attributed by latent iERFs (AttnLRP, latent
    summed over the tokens)."""

    model: Model
    basis: ConceptBasis
    label: str = "cafe"
    method: str = "attnlrp"

    def __post_init__(self) -> None:
        from ierf.cafe.latents import check_basis

        check_basis(self.model, self.basis)
        self.n_concepts = self.basis.n_concepts
        self.detail = (f"{self.model.name} · {self.basis.layer} SAE latents · {self.method} "
                       "latent iERF")

    def presence(self, images: Tensor, index: Tensor) -> Tensor:
        from ierf.cafe.latents import latent_activations

        return latent_activations(self.model, self.basis, self.model.normalize(images)).sum(1)

    def maps(self, images: Tensor, index: Tensor, concepts: Tensor, valid: Tensor) -> Tensor:
        from ierf.cafe.attribution import latent_ierfs
        from ierf.cafe.latents import LatentPairs

        out = images.new_zeros(*concepts.shape, *images.shape[-2:])
        b, m = valid.nonzero(as_tuple=True)
        if len(b):
            zero = torch.zeros_like(b)
            pairs = LatentPairs(b, concepts[b, m], zero, zero.float(), readout="sum")
            out[b, m] = latent_ierfs(self.model, self.basis, self.model.normalize(images),
                                     pairs, self.method).to(out)
        return out


@dataclass
class RandomConcepts:
    """Random concepts: random presences and random ``max(U, t)`` maps, both seeded per image
    (FaCT App. C.3's random concept, scored with the same selection as the others)."""

    n_concepts: int = 64
    seed: int = 0
    label: str = "random"
    detail: str = "random presence · random max(U, t) maps"

    def presence(self, images: Tensor, index: Tensor) -> Tensor:
        # one 1×1 "map" per concept: independent across concepts and images
        return random_maps(index, self.n_concepts, (1, 1), self.seed + 1).flatten(1)

    def maps(self, images: Tensor, index: Tensor, concepts: Tensor, valid: Tensor) -> Tensor:
        maps = random_maps(index, self.n_concepts, tuple(images.shape[-2:]), self.seed + 2)
        idx = concepts.cpu()[..., None, None].expand(-1, -1, *maps.shape[-2:])
        return maps.gather(1, idx).to(images.device)


@dataclass
class C2Row:
    """One method's result: :class:`C2Result` plus what was scored and how long it took."""

    label: str
    detail: str
    result: C2Result
    n_concepts: int
    seconds: float

    def summary(self) -> dict[str, object]:
        r = self.result
        n = r.n_images[r.evaluated]
        return {"method": self.label, "detail": self.detail, "concepts": self.n_concepts,
                "scored": int(r.evaluated.sum()),
                "images_per_concept": float(n.float().mean()) if len(n) else 0.0,
                "consistency": float(r.consistency[r.evaluated].mean()) if len(n) else None,
                "random_baseline": r.baseline, "c2": r.mean, "c2_se": r.se,
                "seconds": round(self.seconds, 2)}


def restrict(presence: Tensor, metric: C2Score, max_concepts: int | None, seed: int) -> Tensor:
    """Presences (N, K) with all but ``max_concepts`` of the scorable concepts (present on at
    least ``metric.min_images`` images), drawn with ``seed``, zeroed (so not scored)."""
    if max_concepts is None:
        return presence
    eligible = ((presence > 0).sum(0) >= metric.min_images).nonzero().flatten()
    if len(eligible) <= max_concepts:
        return presence
    keep = eligible[torch.randperm(len(eligible), generator=torch.Generator().manual_seed(seed))
                    [:max_concepts]]
    mask = torch.zeros(presence.shape[1], dtype=torch.bool)
    mask[keep] = True
    return torch.where(mask, presence, 0)


def run_c2(sources: Sequence[ConceptSource], images: Tensor, features: Features,
           metric: C2Score, *, batch_size: int = 32, max_concepts: int | None = None,
           seed: int = 0, device: str | torch.device = "cpu",
           log: Callable[[str], None] = lambda _: None) -> tuple[list[C2Row], float]:
    """Score every source on ``images`` (N, 3, H, W) in [0, 1]; returns the rows and the
    seconds spent computing features.

    Two passes over image chunks: presences of every source (selection ``S_k`` needs all
    images), then per chunk the features once and each source's maps of its selected pairs.
    """
    n = len(images)
    chunks = [(a, min(a + batch_size, n)) for a in range(0, n, batch_size)]
    seconds = {s.label: 0.0 for s in sources}
    accs = {}
    for s in sources:
        start = time.perf_counter()
        p = torch.cat([s.presence(images[a:b].to(device), torch.arange(a, b)).detach().float()
                       .cpu() for a, b in chunks])
        accs[s.label] = metric.accumulator(restrict(p, metric, max_concepts, seed))
        seconds[s.label] += time.perf_counter() - start
        log(f"{s.label}: presences of {s.n_concepts} concepts on {n} images")
    feature_s = 0.0
    for a, b in chunks:
        x, index = images[a:b].to(device), torch.arange(a, b)
        start = time.perf_counter()
        feats = features(x, index)
        feature_s += time.perf_counter() - start
        for s in sources:
            start = time.perf_counter()
            acc = accs[s.label]
            ids, valid = acc.concepts_for(a, b)
            maps = s.maps(x, index, ids.to(device), valid.to(device)).detach()
            acc.add(a, feats, maps, valid)
            seconds[s.label] += time.perf_counter() - start
        log(f"images {a}..{b - 1} of {n} scored")
    rows = [C2Row(s.label, s.detail, accs[s.label].result(), s.n_concepts, seconds[s.label])
            for s in sources]
    return rows, feature_s


@dataclass
class PosthocSetup:
    """Where the post-hoc concepts come from: an atlas of ``model`` at ``layer`` (built over
    ``n_images`` training images of the synthetic benchmark when missing); SAEs train for
    ``sae_epochs`` epochs of 64-PFV batches (a small atlas: ~400 Adam steps)."""

    atlas: Path
    model: str = "toy-resnet"
    layer: str = "layer3"
    n_images: int = 100
    samples_per_image: int = 4
    n_concepts: int = 32
    sae_epochs: int = 100
    seed: int = 0


def posthoc_sources(setup: PosthocSetup, methods: Sequence[str],
                    device: str | torch.device = "cpu") -> list[BasisConcepts]:
    """Build (or resume) the atlas, fit each post-hoc method on its layer, and wrap them."""
    from ierf.atlas import build_atlas, open_atlas
    from ierf.concepts.fitting import fit_basis
    from ierf.models import load_model

    try:
        atlas = open_atlas(setup.atlas)
    except IerfError:  # missing or unfinished: build it (an interrupted build resumes)
        atlas = build_atlas(load_model(setup.model), f"benchmark:{setup.seed}:train",
                            [setup.layer], setup.atlas, samples_per_image=setup.samples_per_image,
                            n=setup.n_images, seed=setup.seed, device=device, progress=False)
    if setup.layer not in atlas.layers:
        raise IerfError(f"the atlas {setup.atlas} has layers {atlas.layers}, not "
                        f"{setup.layer!r}; pass --layer or another --atlas")
    model = atlas.model()
    model.net.to(device)
    sae = {"epochs": setup.sae_epochs, "batch_size": 64}
    return [BasisConcepts(model, fit_basis(atlas, setup.layer, m, setup.n_concepts,
                                           device=device, seed=setup.seed,
                                           **(sae if m.endswith("sae") else {})), m)
            for m in methods]
