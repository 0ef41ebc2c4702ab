"""SRD speed against the plain gradient, Captum IG and Zennit LRP, in one process.

    python benchmarks/bench_srd.py [--models resnet50 efficientnet_lite0] [--batch 8]

Prints ms/image, the ratio to the plain input gradient measured in the same process, and
the peak memory of each method (CUDA: max allocated above the model; CPU: peak RSS of a
fresh process that loads the model and runs the method once, model included).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

import ierf

METHODS = ["gradient", "srd", "srd-high", "srd-low", "captum-ig", "zennit-lrp"]


def make_method(name: str, model: ierf.Model) -> Callable[[torch.Tensor, torch.Tensor], object]:
    """A callable (x, target) → map for each benchmarked method."""
    if name == "captum-ig":
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(model.net)
        return lambda x, t: ig.attribute(x, target=t, n_steps=32, internal_batch_size=x.shape[0])
    if name == "zennit-lrp":
        from zennit.attribution import Gradient
        from zennit.composites import EpsilonPlusFlat

        def lrp(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            onehot = torch.eye(model.num_classes, device=x.device)[t]
            with Gradient(model.net, EpsilonPlusFlat()) as attributor:
                return attributor(x, onehot)[1]
        return lrp
    method = ierf.attributor(name, model)
    return lambda x, t: method.attribute(x, t)


def time_method(fn: Callable, x: torch.Tensor, t: torch.Tensor, repeats: int) -> float:
    """Median seconds per call after one warm-up call."""
    fn(x, t)
    times = []
    for _ in range(repeats):
        if x.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn(x, t)
        if x.is_cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def load(name: str, device: str) -> ierf.Model:
    torch.manual_seed(0)
    model = ierf.load_model(name, weights=None if name == "resnet50" else "pretrained")
    if name == "resnet50":
        _no_inplace(model.net)  # zennit needs out-of-place activations
    model.net.to(device)
    return model


def _no_inplace(net: torch.nn.Module) -> None:
    for m in net.modules():
        if hasattr(m, "inplace"):
            m.inplace = False


def peak_memory_mb(model_name: str, method: str, batch: int, device: str) -> float:
    """Peak memory (MB) of one call: CUDA allocator above the model, or on the CPU the peak RSS
    of a fresh process running it (model and interpreter included: compare rows, not zero)."""
    if device.startswith("cuda"):
        model = load(model_name, device)
        x = torch.randn(batch, *model.input_size, device=device)
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        make_method(method, model)(x, torch.zeros(batch, dtype=torch.long, device=device))
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    code = ("import resource, json, torch, sys; sys.path.insert(0, 'benchmarks');"
            "from bench_srd import load, make_method;"
            f"m = load({model_name!r}, 'cpu'); x = torch.randn({batch}, *m.input_size);"
            f"f = make_method({method!r}, m); t = torch.zeros({batch}, dtype=torch.long);"
            "f(x, t); peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss;"
            "print(json.dumps(peak / 1024))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--models", nargs="+", default=["resnet50", "efficientnet_lite0"])
    p.add_argument("--methods", nargs="+", default=METHODS)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory column")
    args = p.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    print(f"device {args.device}, batch {args.batch}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, maxrss now "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB")
    for name in args.models:
        model = load(name, args.device)
        x = torch.randn(args.batch, *model.input_size, device=args.device)
        t = torch.randint(0, model.num_classes, (args.batch,), device=args.device)
        rows = {m: time_method(make_method(m, model), x, t, args.repeats) for m in args.methods}
        base = rows.get("gradient", next(iter(rows.values())))
        print(f"\n### {name} ({args.device}, batch {args.batch}, {tuple(x.shape[1:])})\n")
        print("| method | ms / image | images / s | × gradient | peak memory (MB) |")
        print("|---|---:|---:|---:|---:|")
        for m, sec in rows.items():
            mem = "—" if args.no_memory else f"{peak_memory_mb(name, m, args.batch, args.device):.0f}"
            print(f"| {m} | {1000 * sec / args.batch:.1f} | {args.batch / sec:.1f} | "
                  f"{sec / base:.2f} | {mem} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
