"""Faithfulness: does the model's output move as the attribution says? (Appendix VII-G; thesis Ch. 4).

Every metric here perturbs *features* of the input — pixels, or ``patch_size × patch_size``
patches for ViTs (thesis Sec. 7.2.1) — by replacing all channels of a feature with a
baseline, and reads the target class's logit or probability. All perturbed copies of a
batch go through the network in chunks of ``internal_batch_size`` (one forward pass per
chunk, no loop over features). A feature's attribution is the sum of the map over its pixels.

Baselines: a float (a constant in the model's *input* space, i.e. after normalisation),
``"mean"`` (each image's per-channel mean), ``"black"`` (each image's minimum, Quantus'
"black") or ``"blur"`` (a Gaussian-blurred copy, RISE's insertion start).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ierf.errors import IerfError
from ierf.metrics.base import Explain, Metric, check_choice, class_scores, normalise_map
from ierf.metrics.similarity import pearson
from ierf.models.model import Model

MaskFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
OUTPUTS = ("logits", "probabilities")


def salience_rank(a: torch.Tensor) -> torch.Tensor:
    """(B, U) rank of each feature by descending attribution (0 = most salient; ties by index)."""
    order = torch.argsort(a, dim=1, descending=True, stable=True)
    ranks = torch.arange(a.shape[1], device=a.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, ranks)


class PerturbationMetric(Metric):
    """Shared machinery: features, baselines and the chunked forward pass of perturbed copies.

    Parameters
    ----------
    patch_size : side of the square feature (1 = pixels; 16 for a ViT-B/16's patches).
    baseline : replacement value (see the module docstring).
    output : ``"logits"`` or ``"probabilities"`` (softmax) of the target class.
    normalise, absolute : Quantus' preprocessing of the map (max-abs division, ``|a|``).
    internal_batch_size : perturbed copies per forward pass; ``None``: 8 on the CPU (larger
        chunks are slower there: the forward pass is memory-bound), 256 on a GPU.
    progress : show a progress bar over the chunks.
    """

    def __init__(self, patch_size: int = 1, baseline: float | str = "mean",
                 output: str = "logits", normalise: bool = True, absolute: bool = False,
                 internal_batch_size: int | None = None, progress: bool = False) -> None:
        check_choice("output", output, OUTPUTS)
        if isinstance(baseline, str):
            check_choice("baseline", baseline, ("mean", "black", "blur"))
        if patch_size < 1 or (internal_batch_size is not None and internal_batch_size < 1):
            raise IerfError("patch_size and internal_batch_size must be positive integers")
        self.patch_size, self.baseline, self.output = int(patch_size), baseline, output
        self.normalise, self.absolute = normalise, absolute
        self.internal_batch_size, self.progress = internal_batch_size, progress

    def features(self, a: torch.Tensor) -> torch.Tensor:
        """(B, H, W) map → (B, U) attribution per feature (sum over each patch), row-major."""
        p = self.patch_size
        b, h, w = a.shape
        if h % p or w % p:
            raise IerfError(f"input {h}×{w} is not a whole number of {p}×{p} patches; "
                            "choose a patch_size that divides the input size")
        return a.view(b, h // p, p, w // p, p).sum((2, 4)).flatten(1)

    def baseline_of(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) or broadcastable replacement values for ``x``."""
        if self.baseline == "mean":
            return x.mean((2, 3), keepdim=True)
        if self.baseline == "black":
            return x.flatten(1).amin(1).view(-1, 1, 1, 1)
        if self.baseline == "blur":
            import torchvision.transforms.functional as TF

            return TF.gaussian_blur(x, [11, 11], [5.0, 5.0])
        return torch.full_like(x[:, :, :1, :1], float(self.baseline))

    def scores(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(N,) target score of unperturbed inputs."""
        with torch.no_grad():
            return class_scores(net(x), y, self.output)

    def perturbed_scores(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         copies: int, masks: MaskFn) -> torch.Tensor:
        """(B, copies) target scores of perturbed copies of ``x``.

        ``masks(image, copy)`` gives, for (n,) image and copy indices, the (n, U) bool
        features to replace in that copy. Copies of all images are chunked together.
        """
        b, _, h, w = x.shape
        p = self.patch_size
        base = self.baseline_of(x)  # (B, C or 1, 1 or H, 1 or W): torch.where broadcasts it
        flat = torch.arange(b * copies, device=x.device)
        out = []
        chunks = flat.split(self.internal_batch_size or (8 if x.device.type == "cpu" else 256))
        with torch.no_grad():
            for idx in tqdm(chunks, disable=not self.progress, desc=self.name, leave=False):
                image, copy = idx // copies, idx % copies
                m = masks(image, copy).view(-1, 1, h // p, w // p)
                if p > 1:
                    m = m.repeat_interleave(p, 2).repeat_interleave(p, 3)
                xp = torch.where(m, base[image], x[image])
                out.append(class_scores(net(xp), y[image], self.output))
        return torch.cat(out).view(b, copies)

    def prepare(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                a: torch.Tensor, mask: torch.Tensor | None
                ) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validate and return ``(net, x, y, feature attributions (B, U))``."""
        m, x, y, a, _ = self.validate(model, x, y, a, mask)
        return m.net, x, y, self.features(normalise_map(a, self.normalise, self.absolute))


class FaithfulnessCorrelation(PerturbationMetric):
    """Fidelity / Faithfulness Correlation (Bhatt et al. 2020; Appendix VII-G, thesis Eq. 4.1).

    ``μ_F = corr_S( Σ_{i∈S} φ(x)_i , F(x) − F(x[x_S = x̄_S]) )`` over ``nr_runs`` random
    subsets ``S`` of ``subset_size`` features, Pearson correlation, target *logit*.

    Parameters
    ----------
    subset_size : |S| (paper: 200 pixels; thesis: 20 patches for ViTs).
    nr_runs : number of random subsets per image (Quantus' default: 100).
    baseline : replacement value; paper: 0 ("replaced to value of 0").
    seed : seed of the subsets (drawn on the CPU, so equal on every device).
    Others as :class:`PerturbationMetric`.

    Returns the correlation in [−1, 1] per image. Higher is better; a random map scores ≈ 0.
    """

    name: ClassVar[str] = "fidelity"
    score_direction: ClassVar[str] = "higher"

    def __init__(self, subset_size: int = 200, nr_runs: int = 100, baseline: float | str = 0.0,
                 output: str = "logits", seed: int = 0, **kwargs) -> None:
        super().__init__(baseline=baseline, output=output, **kwargs)
        if subset_size < 1 or nr_runs < 2:
            raise IerfError("subset_size must be >= 1 and nr_runs >= 2 (a correlation needs two)")
        self.subset_size, self.nr_runs, self.seed = int(subset_size), int(nr_runs), seed

    def subsets(self, n_features: int, device: torch.device) -> torch.Tensor:
        """(nr_runs, subset_size) random feature indices, without replacement per subset.

        The same subsets serve every image of a batch, so a score does not depend on the
        image's position in the batch (batched = one at a time).
        """
        if self.subset_size > n_features:
            raise IerfError(f"subset_size {self.subset_size} exceeds the {n_features} features")
        g = torch.Generator().manual_seed(self.seed)
        return torch.rand(self.nr_runs, n_features, generator=g).topk(self.subset_size, 1).indices.to(device)

    def __call__(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, *, mask: torch.Tensor | None = None,
                 explain: Explain | None = None) -> torch.Tensor:
        net, x, y, a = self.prepare(model, x, y, a, mask)
        u = a.shape[1]
        s = self.subsets(u, x.device)

        def masks(image: torch.Tensor, run: torch.Tensor) -> torch.Tensor:
            m = torch.zeros(len(image), u, dtype=torch.bool, device=x.device)
            return m.scatter_(1, s[run], True)

        drop = self.scores(net, x, y)[:, None] - self.perturbed_scores(net, x, y, self.nr_runs, masks)
        sums = a[:, s].sum(2)  # (B, nr_runs)
        return pearson(sums, drop)


def curve_auc(curve: torch.Tensor) -> torch.Tensor:
    """Area under (B, n + 1) curves on the fraction axis ``k / n ∈ [0, 1]`` by the trapezoidal
    rule, ``(s_0/2 + s_1 + … + s_{n−1} + s_n/2) / n`` (thesis Eqs. 4.3–4.4), so a probability
    curve's AUC lies in [0, 1] whatever the number of steps."""
    return torch.trapezoid(curve, dx=1.0 / (curve.shape[1] - 1), dim=1)


class _Curve(PerturbationMetric):
    """Cumulative perturbation in order of attribution: deletion (most relevant first) or insertion.

    The curve has ``n + 1`` points ``s_0 … s_n`` at fractions ``k / n`` of the steps; the
    score is its area :func:`curve_auc`.

    Parameters
    ----------
    features_in_step : features replaced (or inserted) per step.
    Others as :class:`PerturbationMetric`.
    """

    insert: ClassVar[bool] = False

    def __init__(self, features_in_step: int = 1, **kwargs) -> None:
        super().__init__(**kwargs)
        if features_in_step < 1:
            raise IerfError(f"features_in_step must be >= 1, got {features_in_step}")
        self.features_in_step = int(features_in_step)

    def curve(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
              a: torch.Tensor) -> torch.Tensor:
        """(B, n + 1) target scores after 0, 1, …, n steps."""
        net, x, y, a = self.prepare(model, x, y, a, None)
        u = a.shape[1]
        steps = math.ceil(u / self.features_in_step)
        rank = salience_rank(a)

        def masks(image: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
            done = rank[image] < (step[:, None] * self.features_in_step)
            return ~done if self.insert else done

        return self.perturbed_scores(net, x, y, steps + 1, masks)

    def __call__(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, *, mask: torch.Tensor | None = None,
                 explain: Explain | None = None) -> torch.Tensor:
        return curve_auc(self.curve(model, x, y, a))


class PixelFlipping(_Curve):
    """Pixel Flipping (Bach et al. 2015; thesis Sec. 4.2): delete features, most relevant first.

    Defaults as Quantus: one feature per step, target probability (softmax); baseline:
    the image's per-channel mean (thesis Sec. 7.2.1). Returns the AUC of the curve
    (Eq. 4.3). Lower is better.
    """

    name: ClassVar[str] = "pixel-flipping"
    score_direction: ClassVar[str] = "lower"

    def __init__(self, features_in_step: int = 1, baseline: float | str = "mean",
                 output: str = "probabilities", **kwargs) -> None:
        super().__init__(features_in_step=features_in_step, baseline=baseline, output=output,
                         **kwargs)


class Deletion(_Curve):
    """Deletion (Petsiuk et al. 2018, RISE): delete features, most relevant first.

    RISE's setting: 224 pixels per step, replaced with 0 (in input space), target
    probability; returns the normalised AUC. Lower is better.
    """

    name: ClassVar[str] = "deletion"
    score_direction: ClassVar[str] = "lower"

    def __init__(self, features_in_step: int = 224, baseline: float | str = 0.0,
                 output: str = "probabilities", **kwargs) -> None:
        super().__init__(features_in_step=features_in_step, baseline=baseline, output=output,
                         **kwargs)


class Insertion(_Curve):
    """Insertion (Petsiuk et al. 2018, RISE): start from a blurred copy, insert the most relevant first.

    RISE's setting: 224 pixels per step, Gaussian-blurred start (11×11, σ = 5), target
    probability; returns the normalised AUC. Higher is better.
    """

    name: ClassVar[str] = "insertion"
    score_direction: ClassVar[str] = "higher"
    insert: ClassVar[bool] = True

    def __init__(self, features_in_step: int = 224, baseline: float | str = "blur",
                 output: str = "probabilities", **kwargs) -> None:
        super().__init__(features_in_step=features_in_step, baseline=baseline, output=output,
                         **kwargs)


class SaCo(PerturbationMetric):
    """Salience-guided Faithfulness Coefficient (Wu et al. CVPR 2024; thesis Eqs. 4.5–4.7).

    Features are ranked by attribution and split into ``groups`` equal subsets
    ``G_1 … G_K`` (most salient first); each is replaced *separately* by the baseline and
    ``Δpred(G_i) = p(x) − p(Rp(x, G_i))``. For each pair ``i < j`` (so ``s(G_i) ≥ s(G_j)``,
    ``s`` = summed attribution), ``w(i, j) = s(G_i) − s(G_j)`` if
    ``Δpred(G_i) ≥ Δpred(G_j)`` and its negation otherwise; ``SaCo = Σ w / Σ |w|``.

    Parameters
    ----------
    groups : K (Wu et al.: 10).
    baseline : Wu et al. / thesis: the per-sample mean.
    output : Wu et al.: the predicted probability.
    Others as :class:`PerturbationMetric`.

    Returns SaCo in [−1, 1] per image (NaN if all groups have equal salience). Higher is better.
    """

    name: ClassVar[str] = "saco"
    score_direction: ClassVar[str] = "higher"

    def __init__(self, groups: int = 10, baseline: float | str = "mean",
                 output: str = "probabilities", **kwargs) -> None:
        super().__init__(baseline=baseline, output=output, **kwargs)
        if groups < 2:
            raise IerfError(f"SaCo needs at least 2 groups, got {groups}")
        self.groups = int(groups)

    def __call__(self, model: Model | nn.Module, x: torch.Tensor, y: torch.Tensor,
                 a: torch.Tensor, *, mask: torch.Tensor | None = None,
                 explain: Explain | None = None) -> torch.Tensor:
        net, x, y, a = self.prepare(model, x, y, a, mask)
        b, u = a.shape
        if u < self.groups:
            raise IerfError(f"{u} features cannot form {self.groups} groups; lower groups")
        rank = salience_rank(a)
        group = rank * self.groups // u  # (B, U) group of each feature, 0 = most salient

        def masks(image: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
            return group[image] == k[:, None]

        delta = self.scores(net, x, y)[:, None] - self.perturbed_scores(net, x, y, self.groups, masks)
        salience = torch.zeros(b, self.groups, device=x.device, dtype=a.dtype).scatter_add_(1, group, a)
        ds = salience[:, :, None] - salience[:, None, :]  # s(G_i) − s(G_j)
        agree = delta[:, :, None] >= delta[:, None, :]
        w = torch.where(agree, ds, -ds)
        upper = torch.ones(self.groups, self.groups, dtype=torch.bool, device=x.device).triu(1)
        w = w[:, upper]
        return (w.sum(1) / w.abs().sum(1)).float()
