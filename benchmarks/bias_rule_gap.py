"""How far is the fast SRD bias rule from the paper code's rule (bias split by ‖v̂‖)?

    python benchmarks/bias_rule_gap.py [--model toy-resnet] [--n 4] [--layer layer2]

For n synthetic-benchmark images, compares input maps of the fast path (``proportional`` and
``absorb``) with the explicit reference under the ``norm`` rule, from the same start
relevance (the class-discriminative μ(L→O) of Eq. 5): Pearson correlation, relative L1
distance, and the share of the start relevance that reaches the input (conservation).
"""

from __future__ import annotations

import argparse

import torch

import ierf
from ierf.data.synthetic import generate
from ierf.local.srd import SRD
from ierf.local.srd_reference import sharing_ratios


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", default="toy-resnet")
    p.add_argument("--layer", default=None, help="start layer (default: the encoder output)")
    p.add_argument("--n", type=int, default=4)
    args = p.parse_args()
    model = ierf.load_model(args.model)
    batch = generate(args.n, seed=5, split="test")
    x = torch.cat([model.preprocess(i.permute(1, 2, 0).numpy()) for i in batch.images])
    layer = args.layer or model.encoder_layer()
    fast = {rule: SRD(model, layer=layer, bias=rule).relevance(x, batch.labels)
            for rule in ("proportional", "absorb")}
    start = fast["proportional"][layer].flatten(1)
    norm = sharing_ratios(model.net, x, model.module(layer), bias="norm").backward(start)
    norm = norm.reshape(x.shape[0], *x.shape[2:])
    print(f"{args.model}, start layer {layer}, {args.n} images: input relevance vs the "
          "reference with the paper code's norm rule\n")
    print("| rule | Pearson r (mean) | relative L1 | Σ input / Σ start |")
    print("|---|---:|---:|---:|")
    rows = {"norm (reference)": norm, **{k: v["input"] for k, v in fast.items()}}
    for rule, m in rows.items():
        r = torch.stack([torch.corrcoef(torch.stack([a.flatten(), b.flatten()]))[0, 1]
                         for a, b in zip(m, norm)])
        rel = ((m - norm).abs().sum((1, 2)) / norm.abs().sum((1, 2))).mean()
        kept = (m.sum((1, 2)) / start.sum(1)).mean()
        print(f"| {rule} | {r.mean():.4f} | {rel:.4f} | {kept:.4f} |")


if __name__ == "__main__":
    main()
