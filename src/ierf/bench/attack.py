"""`ierf bench attack`: the explanation manipulation experiment (Sec. IV-B3, Eq. 7, Fig. 4).

Pairs of synthetic-benchmark images: image ``i`` is attacked so that its map moves towards
the map of image ``n + i`` (for that image's own class), with
:func:`ierf.metrics.attacks.manipulation_attack`. Robustness = SSIM and Pearson between the
original and manipulated maps (higher = harder to manipulate).

The attack differentiates the map with respect to the input, so each method here is written
as a differentiable ``explain(net, x, y)`` (``create_graph=True``) that gives the registry
method's map on the real network; SRD runs with μ(L→O) = 1 as the paper does, so no other
attributor leaks into it. The paper's comparison (Fig. 4): gradient, gradient × input, guided
backprop, Integrated Gradients, LRP-z⁺ and SRD.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode
from tqdm.auto import tqdm
from zennit.composites import LayerMapComposite

from ierf.bench.data import prepare
from ierf.bench.run import mean_se
from ierf.bench.store import ResultStore
from ierf.bench.tables import Table
from ierf.errors import unknown_name
from ierf.io import atomic_path
from ierf.local.lrp import zplus_composite
from ierf.local.srd import SRD
from ierf.metrics.attacks import manipulation_attack
from ierf.metrics.base import Explain
from ierf.models.model import Model
from ierf.viz.figures import save_figure

#: the paper's Fig. 4 methods (``gradcam`` is available too)
DEFAULT_METHODS = ("gradient", "grad-x-input", "guided-backprop", "integrated-gradients",
                   "lrp-zplus", "srd")
QUICK_METHODS = ("gradient", "srd")
#: stored per image: the table's two robustness scores, then the attack's own diagnostics
COLUMNS = {"ssim": ("SSIM", "higher"), "pearson": ("PCC", "higher")}
DIAGNOSTICS = ("target-pearson-before", "target-pearson-after", "output-mse")


def _input_gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """∂F_y/∂x with the graph kept (x must require grad)."""
    score = net(x).gather(1, y[:, None]).sum()
    return torch.autograd.grad(score, x, create_graph=True)[0]


def gradient(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient map Σ_c ∂F_y/∂x_c (the attack takes |φ|, as Dombrowski et al.)."""
    return _input_gradient(net, x, y).sum(1)


def grad_x_input(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Gradient × input, summed over channels."""
    return (_input_gradient(net, x, y) * x).sum(1)


def integrated_gradients(steps: int = 16) -> Explain:
    """Integrated Gradients from a zero baseline, ``steps`` midpoint-rule steps (differentiable)."""
    def explain(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        alphas = (torch.arange(steps, device=x.device, dtype=x.dtype) + 0.5) / steps
        path = (alphas.view(-1, 1, 1, 1, 1) * x).flatten(0, 1)  # (steps·B, C, H, W)
        g = _input_gradient(net, path, y.repeat(steps)).view(steps, *x.shape).mean(0)
        return (g * x).sum(1)
    return explain


_RELUS = {F.relu, torch.relu, torch.relu_, torch.Tensor.relu, torch.Tensor.relu_}


class _GuidedBackward(torch.autograd.Function):
    """Forward: the activation's output ``a``; backward: ``relu(g) · slope`` into ``x`` only.

    The backward is made of torch ops on the saved ``slope`` (a graph function of ``x``), so
    with ``create_graph`` the guided gradient is itself differentiable w.r.t. the input.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, a: torch.Tensor, slope: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(slope)
        return a.clone()

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        (slope,) = ctx.saved_tensors
        return g.clamp_min(0) * slope, None, None  # clamp_min: no ReLU call for a mode to see


class _ReLUSlopes(TorchFunctionMode):
    """While active, record the local slope σ'(x) of every ReLU call, in call order.

    ``σ`` is whatever the ReLU call computes under the modes outside this one: the ReLU itself
    (slope 1[x > 0]), or the attack's softplus surrogate (slope sigmoid(βx)). The slope is
    taken by autograd with ``create_graph``, so it stays a graph function of the input.
    """

    def __init__(self) -> None:
        super().__init__()
        self.slopes: list[torch.Tensor] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in _RELUS:
            return func(*args, **(kwargs or {}))
        x = args[0]
        a = torch.relu(x)  # out of place; the softplus surrogate when the attack runs
        self.slopes.append(torch.autograd.grad(a, x, torch.ones_like(a), create_graph=True)[0])
        return a


class _GuidedReLU(TorchFunctionMode):
    """While active, the k-th ReLU call back-propagates ``relu(g) · slopes[k]``."""

    def __init__(self, slopes: list[torch.Tensor]) -> None:
        super().__init__()
        self.slopes = iter(slopes)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func not in _RELUS:
            return func(*args, **(kwargs or {}))
        return _GuidedBackward.apply(args[0], torch.relu(args[0]), next(self.slopes))


def guided_backprop(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Guided backprop (Springenberg et al. 2015), differentiable: max over channels of
    |guided ∂F_y/∂x|, the registry's ``guided-backprop`` map.

    At every ReLU (module or functional) the backward is ``relu(g) · σ'(x)``. The map depends
    on the input only through these slopes, so they come from a plain forward pass (true
    derivatives back to the input), and a second, guided pass uses them: had the slopes been
    taken inside the guided pass, the second derivative the attack needs would flow back
    through guided ReLUs instead of the network's own Jacobian.
    """
    with _ReLUSlopes() as record:
        net(x)
    with _GuidedReLU(record.slopes):
        score = net(x).gather(1, y[:, None]).sum()
    g = torch.autograd.grad(score, x, create_graph=True)[0]
    return g.abs().amax(1)


def lrp_zplus(model: Model, stabilizer: float = 1e-6) -> Explain:
    """LRP-z⁺ with the registry's Zennit composite (:func:`ierf.local.lrp.zplus_composite`),
    differentiable: input relevance summed over channels, output relevance = target logit.

    Zennit's rules compute each layer's relevance with ``autograd.grad`` on the stored layer
    input, and pass ``create_graph`` on when the incoming relevance requires grad, so the
    relevance map stays in the graph when the output relevance does (here: the logit, not
    detached). Its BatchNorm canonizer, however, merges by overwriting ``.data`` and restores
    the parameters on exit, which would silently change the weights the attack's second
    backward pass reads; so the canonizers are applied once, for good, to a private copy of
    the network (as it is when the explainer is built), and only the rule hooks are
    registered per call.
    """
    net = copy.deepcopy(model.net).eval().requires_grad_(False)
    for m in net.modules():
        if getattr(m, "inplace", None) is True:
            m.inplace = False  # Zennit's hooks need out-of-place activations
    composite = zplus_composite(net, stabilizer)
    for canonizer in composite.canonizers:
        canonizer.apply(net)  # never removed: the copy stays canonized
    rules = LayerMapComposite(layer_map=composite.layer_map)

    def explain(_net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with rules.context(net):
            logits = net(x)
            one_hot = torch.zeros_like(logits).scatter_(1, y[:, None], 1.0)
            (relevance,) = torch.autograd.grad(logits, x, one_hot * logits, create_graph=True)
        return relevance.sum(1)
    return explain


def gradcam(model: Model) -> Explain:
    """Grad-CAM at the encoder output: ReLU(Σ_k mean(∂F_y/∂A_k) A_k), upsampled bilinearly."""
    layer = model.module(model.encoder_layer())

    def explain(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        acts: list[torch.Tensor] = []
        handle = layer.register_forward_hook(lambda _m, _i, out: acts.append(out))
        try:
            score = net(x).gather(1, y[:, None]).sum()
        finally:
            handle.remove()
        g = torch.autograd.grad(score, acts[0], create_graph=True)[0]
        cam = F.relu((g.mean((2, 3), keepdim=True) * acts[0]).sum(1, keepdim=True))
        return F.interpolate(cam, size=x.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    return explain


def srd_ones(model: Model) -> Explain:
    """SRD with μ(L→O) = 1 at every PFV of the encoder output (the paper's attack setting),
    kept in the graph (``create_graph``) so the map can be differentiated w.r.t. the input."""
    srd = SRD(model, final="ones", create_graph=True)

    def explain(_net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return srd.attribute(x, y)
    return explain


def explainers(model: Model) -> dict[str, Callable[[], Explain]]:
    """Differentiable explainers by method name (built on demand)."""
    return {"gradient": lambda: gradient, "grad-x-input": lambda: grad_x_input,
            "guided-backprop": lambda: guided_backprop,
            "integrated-gradients": integrated_gradients, "lrp-zplus": lambda: lrp_zplus(model),
            "gradcam": lambda: gradcam(model), "srd": lambda: srd_ones(model)}


def run_attack(model: Model, methods: list[str], n: int, out: str | Path, seed: int = 0,
               batch_size: int = 4, device: str | torch.device = "cpu",
               steps: int | None = None, progress: bool = True) -> Table:
    """Attack ``n`` image pairs per method; write ``table.md/csv`` and ``figure.png`` to ``out``.

    Resumable: per-image results of each (method, batch) are kept in ``out/results.sqlite``.
    ``steps`` caps the optimisation steps (default: the attack's own limit).
    """
    from ierf.data.synthetic import generate

    available = explainers(model)
    for m in methods:
        if m not in available:
            raise unknown_name("attack method (a differentiable explainer)", m, available)
    data = generate(2 * n, seed, "test")
    x, _ = prepare(model, data.images, data.parts_mask)
    x, y = x.to(device), data.labels.to(device)
    model.net.to(device)
    hyper = {} if steps is None else {"max_steps": steps}
    config = {"bench": "attack", "model": model.name, "n": n, "seed": seed,
              "batch_size": batch_size, "attack": hyper}
    out = Path(out)
    starts = list(range(0, n, batch_size))
    figure_maps: dict[str, list[torch.Tensor]] = {}
    with ResultStore(out / "results.sqlite", config) as store:
        bar = tqdm(total=len(methods) * len(starts), desc="attack", unit="batch",
                   disable=not progress)
        for m in methods:
            explain = available[m]()
            done = store.done(model.name, m)
            for b, s in enumerate(starts):
                if b in done and (b > 0 or (out / "maps" / f"{m}.pt").is_file()):
                    bar.update(1)
                    continue
                sl, tl = slice(s, min(s + batch_size, n)), slice(n + s, n + min(s + batch_size, n))
                xt = x[tl].detach().requires_grad_(True)
                target = explain(model.net, xt, y[tl]).detach()
                r = manipulation_attack(model, x[sl], target, explain, y[sl], **hyper)
                store.add(model.name, m, b, {
                    "ssim": r.ssim.tolist(), "pearson": r.pearson.tolist(),
                    "target-pearson-before": r.target_pearson_before.tolist(),
                    "target-pearson-after": r.target_pearson_after.tolist(),
                    "output-mse": r.output_mse.tolist()})
                if b == 0:
                    with atomic_path(out / "maps" / f"{m}.pt") as tmp:
                        torch.save({"original": r.map_original[0].cpu(),
                                    "adv": r.map_adv[0].cpu(), "target": target[0].cpu()}, tmp)
                bar.update(1)
            figure_maps[m] = torch.load(out / "maps" / f"{m}.pt")
        bar.close()
        scores = {m: {k: np.asarray(store.scores(model.name, m, k))
                      for k in (*COLUMNS, *DIAGNOSTICS)} for m in methods}
    table = _table(model, methods, scores)
    table.write(out)
    _figure(model, x[0], x[n], figure_maps, out / "figure.png")
    return table


def _table(model: Model, methods: list[str], scores: dict[str, dict[str, np.ndarray]]) -> Table:
    stats = np.array([[mean_se(scores[m][k]) for k in COLUMNS] for m in methods])
    notes = [("Attack check (mean over pairs): Pearson of the map with the target map before → "
              "after, and the mean squared change of the logits:"), ""]
    notes += [f"- {m}: {np.nanmean(scores[m]['target-pearson-before']):.3f} → "
              f"{np.nanmean(scores[m]['target-pearson-after']):.3f}, logit MSE "
              f"{np.nanmean(scores[m]['output-mse']):.4f}" for m in methods]
    return Table(f"Explanation manipulation on {model.name}: similarity of original and "
                 "manipulated maps (Eq. 7, Fig. 4)", methods, [c for c, _ in COLUMNS.values()],
                 [d for _, d in COLUMNS.values()], stats[..., 0], stats[..., 1],
                 stats[..., 2].astype(int), notes)


def _figure(model: Model, x: torch.Tensor, x_target: torch.Tensor,
            maps: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    """Fig. 4 (top): per method, the target map, the original map and the manipulated map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = ["target map", "original map", "manipulated map"]
    fig, axes = plt.subplots(len(maps) + 1, 3, figsize=(6.4, 2.1 * (len(maps) + 1)),
                             squeeze=False)
    images = model.denormalize(torch.stack([x_target, x]).detach().cpu())
    for ax, img, title in zip(axes[0], images, ["target image", "attacked image"]):
        ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(title, fontsize=8)
    for row, (m, d) in zip(axes[1:], maps.items()):
        for ax, key, title in zip(row, ("target", "original", "adv"), cols):
            ax.imshow(d[key].abs().numpy(), cmap="inferno")
            ax.set_title(f"{m}: {title}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
