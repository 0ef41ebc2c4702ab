"""Speed and quality of SAE fitting on small real PFV sets (issue 12: 118 s on 400 × 64 PFVs).

    python benchmarks/bench_sae_fit.py [--atlas ATLAS --layer layer3] [--n-concepts 16]
                                       [--methods sae topk-sae] [--threads 2] [--repeats 1]

PFVs: the layer's atlas samples when ``--atlas`` is given (the README's atlas: toy-resnet
``layer3`` on 100 benchmark images, 4 samples each = 400 × 64), otherwise the same shape
drawn from toy-resnet ``layer3`` PFVs of 100 synthetic-benchmark images (4 random positions
each). Each method is fitted with :func:`ierf.concepts.fitting.fit_concepts` (default epochs:
≥ 20 epochs and ≥ 2000 Adam steps) and with the training loop as it was before (the same
Adam steps on torch's default thread count), alternating, in one process; both start from
the same initial weights. Prints a Markdown table: seconds, speed-up, Rel-ℓ2 and ℓ0 ratio of
both fits, and the training loss per epoch at the end.
"""

from __future__ import annotations

import argparse
import time

import torch

import ierf
from ierf.concepts.extractors import SAEBase
from ierf.concepts.fitting import METHODS, default_epochs, fit_concepts
from ierf.data.synthetic import generate
from ierf.metrics.concepts import reconstruction_metrics


def pfvs(atlas: str | None, layer: str, n_images: int, per_image: int) -> torch.Tensor:
    """(N, C) PFVs: an atlas layer's samples, or random positions of benchmark images."""
    if atlas:
        from ierf.atlas.store import open_atlas

        return open_atlas(atlas).pfvs(layer)
    model = ierf.load_model("toy-resnet")
    x = model.normalize(generate(n_images, seed=0, split="train").images)
    with torch.no_grad():
        X = model.pfvs(x, layer)[layer].vectors                         # (B, P, C)
    g = torch.Generator().manual_seed(0)
    pick = torch.rand(X.shape[:2], generator=g).topk(per_image, 1).indices
    return X.gather(1, pick[..., None].expand(-1, -1, X.shape[2])).flatten(0, 1)


def reference_fit(sae: SAEBase, X: torch.Tensor, epochs: int, batch_size: int = 256,
                  lr: float = 1e-3) -> SAEBase:
    """``SAEBase.fit`` as it was before: the same Adam steps, on torch's thread setting."""
    optimizer = torch.optim.Adam(sae.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(sae.seed)
    sae.train()
    for _ in range(epochs):
        total = X.new_zeros(())
        for batch in torch.randperm(len(X), generator=generator).split(batch_size):
            loss = sae.loss(X[batch])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            sae.constrain()
            total += loss.detach() * len(batch)
        sae.loss_history_.append(total.item() / len(X))
    sae.eval()
    return sae


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--atlas")
    p.add_argument("--layer", default="layer3")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--per-image", type=int, default=4)
    p.add_argument("--n-concepts", type=int, default=16)
    p.add_argument("--methods", nargs="+", default=["sae", "topk-sae"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    X = pfvs(args.atlas, args.layer, args.images, args.per_image)
    epochs = default_epochs(len(X))
    steps = epochs * -(-len(X) // 256)
    print(f"\n### SAE fitting, {len(X)} × {X.shape[1]} PFVs ({args.atlas or 'benchmark'} "
          f"{args.layer}), K = {args.n_concepts}, {epochs} epochs = {steps} Adam steps, "
          f"torch threads {args.threads}, best of {args.repeats}\n")
    print("| method | before s | now s | speed-up × | Rel-ℓ2 before | Rel-ℓ2 now | "
          "ℓ0 ratio before | ℓ0 ratio now | final loss before | final loss now |\n"
          "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|", flush=True)
    for method in args.methods:
        times: dict[str, list[float]] = {"before": [], "now": []}
        fitted: dict[str, SAEBase] = {}
        for _ in range(args.repeats):
            start = time.perf_counter()
            fitted["before"] = reference_fit(METHODS[method](X.shape[1], args.n_concepts), X,
                                             epochs)
            times["before"].append(time.perf_counter() - start)
            start = time.perf_counter()
            fitted["now"] = fit_concepts(X, method, args.n_concepts)
            times["now"].append(time.perf_counter() - start)
        scores = {k: reconstruction_metrics(sae, X) for k, sae in fitted.items()}
        before, now = min(times["before"]), min(times["now"])
        print(f"| {method} | {before:.1f} | {now:.1f} | {before / now:.1f} | "
              f"{scores['before']['rel_l2']:.4f} | {scores['now']['rel_l2']:.4f} | "
              f"{scores['before']['l0_ratio']:.4f} | {scores['now']['l0_ratio']:.4f} | "
              f"{fitted['before'].loss_history_[-1]:.4g} | {fitted['now'].loss_history_[-1]:.4g} |",
              flush=True)


if __name__ == "__main__":
    main()
