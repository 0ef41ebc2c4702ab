"""Speed of the faithfulness metrics against their forward passes and against Quantus, in one process.

    python benchmarks/bench_metrics.py [--models toy-resnet efficientnet_lite0] [--batch 8]
                                       [--threads 2] [--device cpu] [--metrics ...]

Same model, same inputs (``--batch`` images: synthetic-benchmark images for the toy ResNet at
64², bundled photos for EfficientNet-Lite0 at 224²), same gradient×input maps, and the same
perturbations on both sides:

- Pixel Flipping: ``k`` whole pixels per step (``--flip-steps`` steps), "black" baseline,
  softmax. Quantus counts channel entries, so it gets ``3k`` entries per step (equal to ``k``
  pixels when the map has no ties); its check that ``3k`` divides H·W is switched off (64²
  and 224² have no factor 3; its loop handles a partial last step).
- Faithfulness Correlation: ``--runs`` subsets of 200 pixels set to 0, logits. Quantus gets a
  perturbation function that replaces whole pixels and our subsets in place of its random ones.

- Insertion, Deletion (RISE settings: 224 pixels per step) and SaCo (10 groups): ours only
  (Quantus has no such metric).

On a CPU a perturbation metric costs its forward passes; the physical limit is the network
alone on the same images: the metric's own forward passes (the unperturbed batch, then every
perturbed copy) as plain forward passes of inputs built beforehand, in chunks of the metric's
``internal_batch_size``. Each side and that floor are timed ``--repeats`` times, alternating,
and the best time of each is kept (the machine may be shared). On a shared CPU that floor,
timed in separate runs, drifts with the load; so each run of a metric also times its *own*
forward passes (``net.forward`` wrapped for the duration of the call), and ``/ own forwards``
is the call's time divided by them: the overhead outside the network, immune to drift.
Prints a Markdown table: metric | model | setting | ours ms/image | Quantus ms/image |
speed-up × | network alone ms/image | ours / network | Quantus / network | ours / own
forwards | Quantus / own forwards | max |score difference|. Target: ours / network ≤ 1.2.
(Quantus runs its forward passes in chunks of the batch size, ``--batch``; its ratios are
taken against the same floor and its own forward passes.)
"""

from __future__ import annotations

import argparse
import time
import warnings
from functools import partial

import numpy as np
import quantus
import torch
from typing_extensions import Self

import ierf
from ierf.data.synthetic import generate
from ierf.metrics import Deletion, FaithfulnessCorrelation, Insertion, PixelFlipping, SaCo

PHOTOS = ["chelsea", "coffee", "camera", "rocket", "astronaut", "horse", "clock", "coins"]


def load(name: str, batch: int, device: str) -> tuple[ierf.Model, torch.Tensor, torch.Tensor]:
    """Model, inputs and gradient×input maps (B, H, W) for each image's top class."""
    model = ierf.load_model(name)
    if name.startswith("toy"):
        images = generate(batch, seed=0, split="test").images
        p = model.preprocessing
        x = (images - torch.tensor(p.mean).view(1, 3, 1, 1)) / torch.tensor(p.std).view(1, 3, 1, 1)
    else:
        x = torch.cat([model.preprocess(ierf.load_image(PHOTOS[i % len(PHOTOS)]))
                       for i in range(batch)])
    model.net.to(device)
    x = x.to(device).requires_grad_(True)
    logits = model.net(x)
    y = logits.argmax(1)
    g, = torch.autograd.grad(logits.gather(1, y[:, None]).sum(), x)
    a = (g * x).sum(1).detach()
    a = a + 1e-7 * a.abs().max() * torch.randn_like(a)  # no ties: pixel order well defined
    return model, x.detach(), y, a


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    out = np.asarray(fn(), dtype=float)
    sync()
    return time.perf_counter() - start, out


class ForwardClock:
    """Seconds spent inside ``net.forward`` while in the ``with`` block (the forward is
    wrapped on the instance, so ``net(x)`` from any caller, Quantus included, is timed)."""

    def __init__(self, net: torch.nn.Module) -> None:
        self.net, self.seconds = net, 0.0

    def __enter__(self) -> Self:
        inner = self.net.forward

        def forward(*args, **kwargs):
            sync()
            start = time.perf_counter()
            out = inner(*args, **kwargs)
            sync()
            self.seconds += time.perf_counter() - start
            return out

        self.net.forward = forward
        return self

    def __exit__(self, *exc) -> None:
        del self.net.forward


def timed_with_forwards(net: torch.nn.Module, fn) -> tuple[float, np.ndarray, float]:
    """(seconds, result, seconds inside ``net.forward``) of one call of ``fn``."""
    with ForwardClock(net) as clock:
        t, out = timed(fn)
    return t, out, clock.seconds


def chunk_plan(b: int, copies: int, chunk: int) -> list[int]:
    """Batch sizes of a metric's forward passes: the unperturbed batch, then ``b·copies``
    perturbed images in chunks of ``chunk``."""
    return [b] + [min(chunk, b * copies - s) for s in range(0, b * copies, chunk)]


def floor_inputs(x: torch.Tensor, plan: list[int]) -> list[torch.Tensor]:
    """Inputs of the floor, built before timing (the images of ``x`` cycled to each size)."""
    return [x[torch.arange(n, device=x.device) % len(x)].contiguous() for n in plan]


def floor(net: torch.nn.Module, inputs: list[torch.Tensor]) -> np.ndarray:
    """The network alone: one plain forward pass per input."""
    with torch.no_grad():
        return np.asarray([net(z)[0, 0].item() for z in inputs])


def chunk_of(metric, device: str) -> int:
    """The metric's forward chunk (its ``internal_batch_size`` or its default)."""
    return metric.internal_batch_size or (8 if device == "cpu" else 256)


def pixel_indices_to_channels(arr, indices, perturb_baseline, **kwargs):
    """Quantus perturb_func replacing all channels of pixel indices (< H·W)."""
    hw = arr.shape[1] // 3
    idx = np.concatenate([indices + c * hw for c in range(3)], axis=1)
    return quantus.functions.perturb_func.batch_baseline_replacement_by_indices(
        arr, idx, perturb_baseline=perturb_baseline)


def bench_pixel_flipping(model, x, y, a, steps, ibs, device):
    """(ours, Quantus, forward passes per image, setting): the two runs as callables."""
    hw = x.shape[2] * x.shape[3]
    k = -(-hw // steps)
    ours = PixelFlipping(features_in_step=k, baseline="black", internal_batch_size=ibs)
    theirs = quantus.PixelFlipping(features_in_step=3 * k, perturb_baseline="black",
                                   disable_warnings=True)
    n = -(-hw // k)

    def run_ours():
        return ours.curve(model, x, y, a)[:, 1:].cpu()

    def run_quantus():
        return theirs(model=model.net, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(),
                      a_batch=a[:, None].cpu().numpy(), device=device, softmax=True)

    return run_ours, run_quantus, chunk_plan(len(x), n + 1, chunk_of(ours, device))[1:], \
        f"{k} px × {n} steps"


def bench_fidelity(model, x, y, a, runs, ibs, device):
    """(ours, Quantus, forward passes per image, setting): the two runs as callables."""
    ours = FaithfulnessCorrelation(subset_size=200, nr_runs=runs, internal_batch_size=ibs)
    subsets = ours.subsets(x.shape[2] * x.shape[3], torch.device("cpu")).numpy()
    theirs = quantus.FaithfulnessCorrelation(nr_runs=runs, subset_size=200, return_aggregate=False,
                                             perturb_func=pixel_indices_to_channels,
                                             perturb_baseline=0.0, disable_warnings=True)

    def run_ours():
        return ours(model, x, y, a).cpu()

    def run_quantus():
        draws = iter([subsets[r] for r in range(runs) for _ in range(len(x))])
        choice = np.random.choice
        np.random.choice = lambda *args, **kwargs: next(draws)
        try:
            return theirs(model=model.net, x_batch=x.cpu().numpy(), y_batch=y.cpu().numpy(),
                          a_batch=a[:, None].cpu().numpy(), device=device)
        finally:
            np.random.choice = choice

    return run_ours, run_quantus, chunk_plan(len(x), runs, chunk_of(ours, device)), \
        f"{runs} runs × 200 px"


def bench_curve(cls, model, x, y, a, _n, ibs, device):
    """Insertion / Deletion with RISE's settings (ours only)."""
    ours = cls(internal_batch_size=ibs)
    steps = -(-x.shape[2] * x.shape[3] // ours.features_in_step)
    return (lambda: ours(model, x, y, a).cpu()), None, \
        chunk_plan(len(x), steps + 1, chunk_of(ours, device))[1:], \
        f"{ours.features_in_step} px × {steps} steps"


def bench_saco(model, x, y, a, _n, ibs, device):
    """SaCo, 10 groups (ours only)."""
    ours = SaCo(internal_batch_size=ibs)
    return (lambda: ours(model, x, y, a).cpu()), None, \
        chunk_plan(len(x), ours.groups, chunk_of(ours, device)), f"{ours.groups} groups"


BENCHES = {"pixel-flipping": (bench_pixel_flipping, "flip_steps"),
           "fidelity": (bench_fidelity, "runs"),
           "insertion": (partial(bench_curve, Insertion), None),
           "deletion": (partial(bench_curve, Deletion), None),
           "saco": (bench_saco, None)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=["toy-resnet", "efficientnet_lite0"])
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--flip-steps", type=int, default=128)
    p.add_argument("--runs", type=int, default=100)
    p.add_argument("--internal-batch-size", type=int, default=None,
                   help="perturbed copies per forward pass (default: the metrics' own)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--metrics", nargs="+", default=list(BENCHES), choices=list(BENCHES))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    quantus.helpers.asserts.assert_features_in_step = lambda *a, **k: None
    warnings.filterwarnings("ignore")
    print(f"\n### Metrics vs Quantus {quantus.__version__} ({args.device}, {args.threads} threads, "
          f"batch {args.batch}, gradient×input maps, best of {args.repeats} alternating runs)\n")
    print("| metric | model | setting | ours ms/image | Quantus ms/image | speed-up × | "
          "network alone ms/image | ours / network | Quantus / network | ours / own forwards | "
          "Quantus / own forwards | max score diff |\n"
          "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for name in args.models:
        model, x, y, a = load(name, args.batch, args.device)
        b = len(x)
        for metric in args.metrics:
            bench, n_arg = BENCHES[metric]
            run_ours, run_quantus, plan, setting = bench(
                model, x, y, a, getattr(args, n_arg) if n_arg else None,
                args.internal_batch_size, args.device)
            inputs = floor_inputs(x, plan)
            floor(model.net, inputs[:1])
            times: dict[str, list[float]] = {"ours": [], "quantus": [], "floor": []}
            own: dict[str, list[float]] = {"ours": [], "quantus": []}  # call / its forwards
            for _ in range(args.repeats):  # alternate: load drift hits all three alike
                t, s_ours, t_fw = timed_with_forwards(model.net, run_ours)
                times["ours"].append(t)
                own["ours"].append(t / t_fw)
                if run_quantus is not None:
                    t, s_q, t_fw = timed_with_forwards(model.net, run_quantus)
                    times["quantus"].append(t)
                    own["quantus"].append(t / t_fw)
                times["floor"].append(timed(partial(floor, model.net, inputs))[0])
            t_ours, t_net = (min(times[k]) * 1000 / b for k in ("ours", "floor"))
            own_ours = own["ours"][int(np.argmin(times["ours"]))]
            if run_quantus is not None:
                t_q = min(times["quantus"]) * 1000 / b
                own_q = own["quantus"][int(np.argmin(times["quantus"]))]
                quantus_cols = (f"{t_q:.1f} | {t_q / t_ours:.2f} | {t_net:.1f} | "
                                f"{t_ours / t_net:.2f} | {t_q / t_net:.2f} | {own_ours:.3f} | "
                                f"{own_q:.3f} | {np.abs(s_ours - s_q).max():.1e}")
            else:
                quantus_cols = (f"– | – | {t_net:.1f} | {t_ours / t_net:.2f} | – | "
                                f"{own_ours:.3f} | – | –")
            print(f"| {metric} | {name} {x.shape[2]}² | {setting} | {t_ours:.1f} | {quantus_cols} |",
                  flush=True)


if __name__ == "__main__":
    main()
