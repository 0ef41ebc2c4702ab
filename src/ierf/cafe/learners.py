"""What learns from a drained token buffer in :class:`~ierf.cafe.training.SAETrainer`: an SAE
with Adam (Eqs. 8–9) or mini-batch spherical k-means (any extractor, IERF Sec. V-A).

A learner has ``extractor`` (the :class:`~ierf.concepts.extractors.ConceptExtractor` saved as
the basis), ``start(tokens)`` (called once, on the first full buffer), ``step(batch) → loss``
(one minibatch), and ``state()`` / ``load_state()``: every tensor a checkpoint needs to go on
bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

from ierf.concepts.extractors import SAEBase
from ierf.concepts.extractors.minibatch_kmeans import MiniBatchSphericalKMeans


class Learner(Protocol):
    extractor: object

    def start(self, tokens: torch.Tensor) -> None: ...

    def step(self, batch: torch.Tensor) -> float: ...

    def state(self) -> dict[str, torch.Tensor]: ...

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None: ...


class SAELearner:
    """Adam steps on ``sae.loss`` (then ``sae.constrain``); the decoder bias starts at the
    mean of the first buffer.

    Data-parallel: ``average`` (e.g. :func:`ierf.dist.all_mean`) averages the first buffer's
    mean and every step's gradients and loss over the ranks, so that all ranks hold the same
    SAE and each step equals one on the union of the ranks' equal-sized minibatches (the
    losses of Eqs. 8–9 are means over tokens)."""

    def __init__(self, sae: SAEBase, lr: float,
                 average: Callable[[torch.Tensor], torch.Tensor] | None = None) -> None:
        self.extractor = sae
        self.opt = torch.optim.Adam(sae.parameters(), lr=lr)
        self.average = average

    @torch.no_grad()
    def start(self, tokens: torch.Tensor) -> None:
        if self.extractor.decoder.bias is not None:
            mean = tokens.mean(0)
            self.extractor.decoder.bias.copy_(self.average(mean) if self.average else mean)

    def step(self, batch: torch.Tensor) -> float:
        sae = self.extractor
        sae.train()
        loss = sae.loss(batch)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        if self.average is not None:
            loss = self._average_grads(loss)
        self.opt.step()
        sae.constrain()
        sae.eval()
        return loss.item()

    @torch.no_grad()
    def _average_grads(self, loss: torch.Tensor) -> torch.Tensor:
        """Replace every gradient (and the loss) by its mean over the ranks: one collective
        on their concatenation."""
        params = list(self.extractor.parameters())
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = self.average(torch.cat([*(g.flatten() for g in grads), loss.detach()[None]]))
        for p, g in zip(params, flat[:-1].split([g.numel() for g in grads]), strict=True):
            p.grad = g.view_as(p).clone()
        return flat[-1]

    def state(self) -> dict[str, torch.Tensor]:
        tensors = {f"sae/{k}": v for k, v in self.extractor.state_dict().items()}
        for i, state in self.opt.state_dict()["state"].items():
            tensors.update({f"adam/{i}/{k}": torch.as_tensor(v) for k, v in state.items()})
        return tensors

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.extractor.load_state_dict({k.removeprefix("sae/"): v for k, v in tensors.items()
                                        if k.startswith("sae/")})
        state: dict[int, dict[str, torch.Tensor]] = {}
        for k, v in tensors.items():
            if k.startswith("adam/"):
                i, field = k.removeprefix("adam/").split("/")
                state.setdefault(int(i), {})[field] = v.cpu() if field == "step" else v
        self.opt.load_state_dict({"state": state,
                                  "param_groups": self.opt.state_dict()["param_groups"]})


class KMeansLearner:
    """:class:`MiniBatchSphericalKMeans`: bisecting initialisation on the first buffer, one
    running-mean update per minibatch; the loss is the batch's spherical inertia per token."""

    def __init__(self, kmeans: MiniBatchSphericalKMeans) -> None:
        self.extractor = kmeans

    def start(self, tokens: torch.Tensor) -> None:
        self.extractor.start(tokens)

    def step(self, batch: torch.Tensor) -> float:
        return self.extractor.partial_fit(batch)

    def state(self) -> dict[str, torch.Tensor]:
        if self.extractor.stream is None:                  # not started: nothing learnt yet
            return {}
        return {f"kmeans/{k}": v for k, v in self.extractor.state_tensors().items()}

    def load_state(self, tensors: dict[str, torch.Tensor]) -> None:
        self.extractor.load_state_tensors({k.removeprefix("kmeans/"): v
                                           for k, v in tensors.items()})
