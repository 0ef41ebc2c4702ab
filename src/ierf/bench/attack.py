"""`ierf bench attack`: the explanation manipulation experiment (Sec. IV-B3, Eq. 7, Fig. 4).

Pairs of synthetic-benchmark images: image ``i`` is attacked so that its map moves towards
the map of image ``n + i`` (for that image's own class), with
:func:`ierf.metrics.attacks.manipulation_attack`. Robustness = SSIM and Pearson between the
original and manipulated maps (higher = harder to manipulate).

The attack differentiates the map with respect to the input, so each method is looked up in
the method registry (:func:`ierf.attributor`) and run in its differentiable form
(:mod:`ierf.local.differentiable`: the registry method's map, kept in the graph); SRD runs
with μ(L→O) = 1 as the paper does, so no other attributor leaks into it. The paper's comparison (Fig. 4): gradient, gradient × input, guided
backprop, Integrated Gradients, LRP-z⁺ and SRD.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ierf.bench.data import prepare
from ierf.bench.run import mean_se
from ierf.bench.store import ResultStore
from ierf.bench.tables import Table
from ierf.errors import unknown_name
from ierf.io import atomic_path
from ierf.local.differentiable import differentiable, differentiable_methods
from ierf.local.registry import attributor
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


#: registry options per method: the attack's settings (SRD with μ(L→O) = 1, as the paper;
#: Integrated Gradients with 16 midpoint-rule steps: 16 second-order passes per image)
METHOD_OPTIONS: dict[str, dict[str, object]] = {
    "srd": {"final": "ones"},
    "integrated-gradients": {"n_steps": 16, "method": "riemann_middle"},
}


def explainer(model: Model, name: str) -> Explain:
    """The attack's ``explain(net, x, y)`` for registry method ``name``: its differentiable
    form (:func:`ierf.local.differentiable.differentiable`) with :data:`METHOD_OPTIONS`."""
    form = differentiable(attributor(name, model, **METHOD_OPTIONS.get(name, {})))
    return lambda _net, x, y: form(x, y)


def explainers(model: Model) -> dict[str, Callable[[], Explain]]:
    """Differentiable explainers by registry method name (built on demand)."""
    return {name: partial(explainer, model, name) for name in differentiable_methods()}


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
            figure_maps[m] = torch.load(out / "maps" / f"{m}.pt", weights_only=True)
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
