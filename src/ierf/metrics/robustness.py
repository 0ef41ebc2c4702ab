"""Robustness and sanity: Stability under noise (Eq. 34) and model-parameter randomisation.

Both re-run the explainer (``explain(net, x, y) -> (B, H, W)``) on changed inputs or weights.
"""

from __future__ import annotations

import copy
from typing import ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ierf.errors import IerfError
from ierf.metrics.base import Explain, Metric, check_attribution, check_choice, normalise_map
from ierf.metrics.similarity import pearson, spearman, ssim
from ierf.models.model import Model


class Stability(Metric):
    """Stability / Local Lipschitz Estimate (Alvarez-Melis & Jaakkola 2018), Eq. 34.

    ``μ_Sta = max_{x_j ∈ N_ε(x_i)} ‖φ(x_i) − φ(x_j)‖₂ / ‖x_i − x_j‖₂`` over ``nr_samples``
    copies ``x_j = x_i + N(0, σ²)`` (noise on every channel, in the model's input space).
    Maps, original and perturbed, are normalised by their max-abs value (Quantus, paper).

    Parameters
    ----------
    nr_samples : noisy copies per image (Quantus' default: 200).
    sigma : noise standard deviation (paper: 0.1).
    normalise, absolute : map preprocessing (max-abs division; ``|a|``).
    internal_batch_size : noisy copies explained per ``explain`` call (``None``: 8 on the
        CPU, 64 on a GPU).
    seed : seed of the noise (drawn on the CPU, so equal on every device).
    progress : show a progress bar.

    Returns the estimate per image (≥ 0). Lower is better.
    """

    name: ClassVar[str] = "stability"
    score_direction: ClassVar[str] = "lower"
    needs_explain: ClassVar[bool] = True

    def __init__(self, nr_samples: int = 200, sigma: float = 0.1, normalise: bool = True,
                 absolute: bool = False, internal_batch_size: int | None = None, seed: int = 0,
                 progress: bool = False) -> None:
        if nr_samples < 1 or sigma <= 0 or (internal_batch_size is not None and internal_batch_size < 1):
            raise IerfError("nr_samples and internal_batch_size must be >= 1 and sigma > 0")
        self.nr_samples, self.sigma = int(nr_samples), float(sigma)
        self.normalise, self.absolute = normalise, absolute
        self.internal_batch_size, self.seed, self.progress = internal_batch_size, seed, progress

    def noise(self, x: torch.Tensor) -> torch.Tensor:
        """(nr_samples, C, H, W) Gaussian noise of standard deviation ``sigma``.

        The same draws serve every image (batched = one at a time).
        """
        g = torch.Generator().manual_seed(self.seed)
        return (torch.randn(self.nr_samples, *x.shape[1:], generator=g) * self.sigma).to(x)

    def __call__(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, *, mask: torch.Tensor | None = None,
                 explain: Explain | None = None) -> torch.Tensor:
        m, x, y, a, _ = self.validate(model, x, y, a, mask, explain)
        b = x.shape[0]
        a = normalise_map(a, self.normalise, self.absolute)
        eps = self.noise(x)
        ratios = []
        chunk = self.internal_batch_size or (8 if x.device.type == "cpu" else 64)
        chunks = torch.arange(self.nr_samples * b, device=x.device).split(chunk)
        for idx in tqdm(chunks, disable=not self.progress, desc=self.name, leave=False):
            sample, image = idx // b, idx % b
            an = explain(m.net, x[image] + eps[sample], y[image])
            an = normalise_map(check_attribution(an, (len(idx), *a.shape[1:]), x.device),
                               self.normalise, self.absolute)
            num = (a[image] - an).flatten(1).norm(dim=1)
            ratios.append(num / eps[sample].flatten(1).norm(dim=1).clamp_min(1e-10))
        return torch.cat(ratios).view(self.nr_samples, b).amax(0)


SIMILARITIES = {"spearman": spearman, "pearson": pearson, "ssim": ssim}


def randomise(net: nn.Module, seed: int = 42) -> nn.Module:
    """A copy of ``net`` with every layer's parameters re-initialised, top layer first.

    Cascading randomisation (Adebayo et al. 2018) run to the input, the way Quantus'
    ``get_random_layer_generator("top_down")`` does it: each module with
    ``reset_parameters`` is reset after ``torch.manual_seed(seed + 1)``.
    """
    random_net = copy.deepcopy(net)
    modules = [mod for _, mod in random_net.named_modules() if hasattr(mod, "reset_parameters")]
    state = torch.random.get_rng_state()
    try:
        for mod in modules[::-1]:
            torch.manual_seed(seed + 1)
            mod.reset_parameters()
    finally:
        torch.random.set_rng_state(state)
    return random_net.eval()


class Randomisation(Metric):
    """Model-parameter randomisation test (Adebayo et al. 2018), cascading, top-down.

    The explainer is re-run on a copy of the network whose layers are all re-initialised
    (:func:`randomise`, the end of the cascade); the score is the similarity between the
    original map and the randomised-model map. A map that survives the randomisation
    (similarity near 1) does not depend on what the model learnt: it fails the test.
    ``explain`` must build its map from the ``net`` it is given (e.g. ``lambda net, x, y:
    ierf.attributor("gradient", net).attribute(x, y)``), not from a network it closed over.

    Parameters
    ----------
    similarity : ``"spearman"`` (Quantus' default, rank correlation of the maps),
        ``"pearson"`` or ``"ssim"`` (maps rescaled to [0, 1] first).
    normalise, absolute : map preprocessing; Quantus' MPRT defaults: both on.
    seed : seed of the re-initialisation.

    Returns the similarity per image. Lower is better.
    """

    name: ClassVar[str] = "randomisation"
    score_direction: ClassVar[str] = "lower"
    needs_explain: ClassVar[bool] = True

    def __init__(self, similarity: str = "spearman", normalise: bool = True,
                 absolute: bool = True, seed: int = 42) -> None:
        check_choice("similarity", similarity, tuple(SIMILARITIES))
        self.similarity, self.normalise, self.absolute, self.seed = similarity, normalise, absolute, seed

    def __call__(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, *, mask: torch.Tensor | None = None,
                 explain: Explain | None = None) -> torch.Tensor:
        m, x, y, a, _ = self.validate(model, x, y, a, mask, explain)
        ar = check_attribution(explain(randomise(m.net, self.seed), x, y), a.shape, x.device)
        a = normalise_map(a, self.normalise, self.absolute)
        ar = normalise_map(ar, self.normalise, self.absolute)
        if self.similarity == "ssim":
            a, ar = _unit_range(a), _unit_range(ar)
        return SIMILARITIES[self.similarity](a, ar)


def _unit_range(a: torch.Tensor) -> torch.Tensor:
    """Rescale each map to [0, 1] (for SSIM's fixed data range)."""
    lo = a.flatten(1).amin(1).view(-1, 1, 1)
    hi = a.flatten(1).amax(1).view(-1, 1, 1)
    return (a - lo) / (hi - lo).clamp_min(1e-12)
