"""Train ``fact-toy`` (FaCT on the synthetic benchmark) on a CPU and write its checkpoint.

Writes ``src/ierf/models/weights/fact-toy.safetensors`` and ``fact-toy.json`` (accuracy curve,
timings, recipe). Two recipes (``--mode``):

* ``two-stage`` (the paper's, Sec. 5 / App. A): train the B-cos backbone; fit a bias-free
  TopK SAE on its features at the bottleneck layer (reconstruction only, the existing
  :class:`~ierf.concepts.extractors.BiasFreeTopKSAE`); insert it; optionally fine-tune the
  whole FaCT model end to end (cross-entropy + normalised reconstruction loss).
* ``scratch``: train backbone and bottleneck together from random weights with the same loss.

Data pipeline and split conventions as ``scripts/train_toy_models.py``: training images from
``generate(n, seed=0, split="train")`` with random horizontal flips, a validation curve on
``split="val"`` (no checkpoint selection), accuracy on ``generate(2000, seed=1234, split="test")``::

    PYTHONPATH=src python scripts/train_fact_toy.py            # the committed checkpoint
    PYTHONPATH=src python scripts/train_fact_toy.py --mode scratch --out-dir /tmp/fact

Measured on 8000 training images (2 CPU cores shared with other jobs; ``fact-toy.json`` holds
the committed run's curve and timings):

==============================================  =========  ==========================
recipe                                          test acc.  latents (of 128) on test
==============================================  =========  ==========================
two-stage, SAE inserted, no fine-tuning          96.85 %   2 dead
two-stage + 1 epoch fine-tuning (committed)      97.80 %   15 dead, 3 always active
from scratch, 5 epochs                           98.05 %   85 dead, 6 always active
==============================================  =========  ==========================

(dead: never active on 500 test images; always active: active at > 60 % of positions, the
paper's App. A criterion). The backbone alone reaches 98.2 % validation accuracy after 4 epochs. Training from scratch
is as accurate but collapses onto few concepts (TopK without an auxiliary loss), so the
committed model uses the paper's two-stage recipe plus a short end-to-end fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ierf.concepts.extractors import BiasFreeTopKSAE
from ierf.data.synthetic import CLASS_NAMES, generate
from ierf.fact import FaCT, TopKBottleneck, bcos_toy_resnet, encode_input
from ierf.fact.zoo import (
    FACT_TOY_CONCEPTS,
    FACT_TOY_DEPTHS,
    FACT_TOY_K,
    FACT_TOY_LAYER,
    FACT_TOY_WIDTHS,
    build_fact_toy,
)

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "src" / "ierf" / "models" / "weights"
TRAIN_SEED, TEST_SEED, N_TEST, VAL_SEED = 0, 1234, 2000, 0


def timer() -> tuple[float, float]:
    return time.time(), time.process_time()


def since(t: tuple[float, float]) -> dict[str, float]:
    return {"wall_s": round(time.time() - t[0], 1), "cpu_s": round(time.process_time() - t[1], 1)}


@torch.no_grad()
def accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 250) -> float:
    """Top-1 accuracy of a network on images in [0, 1] (eval mode)."""
    net.eval()
    hits = sum((net(x).argmax(1) == y).sum().item()
               for x, y in zip(images.split(batch_size), labels.split(batch_size)))
    return hits / len(labels)


class Backbone(nn.Module):
    """The B-cos backbone alone, taking RGB images (for stage 1)."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(encode_input(x))


def fit(model: nn.Module, images: Tensor, labels: Tensor, val: tuple[Tensor, Tensor], *,
        epochs: int, lr: float, batch_size: int, seed: int, recon_weight: float,
        tag: str, curve: list[dict]) -> None:
    """AdamW + one-cycle schedule + random horizontal flips (as the toy models). For a FaCT
    model the loss adds ``recon_weight · ‖h − ĥ‖² / ‖h‖²`` at its bottleneck."""
    torch.manual_seed(seed)
    steps = epochs * (len(images) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    for epoch in range(epochs):
        t = timer()
        model.train()
        order = torch.randperm(len(images))
        seen, hits, loss_sum, rec_sum = 0, 0, 0.0, 0.0
        for idx in order[: len(order) // batch_size * batch_size].split(batch_size):
            x, y = images[idx], labels[idx]
            flip = torch.rand(len(x)) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            rec = torch.zeros(())
            if isinstance(model, FaCT):
                with model.recording() as r:
                    logits = model(x)
                for layer, h in r.features.items():
                    h_hat = model.bottleneck(layer).decode(r.codes[layer])
                    rec = rec + (h - h_hat).square().sum() / h.square().sum().clamp_min(1e-12)
            else:
                logits = model(x)
            loss = F.cross_entropy(logits, y) + recon_weight * rec
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            seen += len(y)
            hits += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
            rec_sum += rec.item() * len(y)
        val_acc = accuracy(model, *val)
        row = {"stage": tag, "epoch": epoch + 1, "loss": round(loss_sum / seen, 4),
               "rel_recon": round(rec_sum / seen, 4), "train_acc": round(hits / seen, 4),
               "val_acc": round(val_acc, 4), **since(t)}
        curve.append(row)
        print(json.dumps(row), flush=True)


@torch.no_grad()
def layer_features(backbone: nn.Module, layer: str, images: Tensor, per_image: int,
                   seed: int, batch_size: int = 250) -> Tensor:
    """``per_image`` random PFVs per image at ``layer`` of the trained backbone, (N, C)."""
    backbone.eval()
    out: list[Tensor] = []
    handle = dict(backbone.named_modules())[layer].register_forward_hook(
        lambda m, i, o: out.append(o.flatten(2).transpose(1, 2)))
    try:
        for x in images.split(batch_size):
            backbone(encode_input(x))
    finally:
        handle.remove()
    feats = torch.cat(out)  # (N, HW, C)
    g = torch.Generator().manual_seed(seed)
    pick = torch.rand(feats.shape[:2], generator=g).argsort(1)[:, :per_image]
    return feats.gather(1, pick[..., None].expand(-1, -1, feats.shape[2])).flatten(0, 1)


def main() -> None:
    """Command-line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", choices=["two-stage", "scratch"], default="two-stage")
    p.add_argument("--n-train", type=int, default=8000)
    p.add_argument("--n-val", type=int, default=500)
    p.add_argument("--epochs", type=int, default=4, help="backbone (two-stage) or all (scratch)")
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--sae-epochs", type=int, default=10)
    p.add_argument("--sae-per-image", type=int, default=16)
    p.add_argument("--finetune-epochs", type=int, default=1)
    p.add_argument("--finetune-lr", type=float, default=1e-3)
    p.add_argument("--recon-weight", type=float, default=1.0)
    p.add_argument("--backbone-from", type=Path, default=None,
                   help="skip stage 1: load this backbone state dict (safetensors)")
    p.add_argument("--save-backbone", type=Path, default=None,
                   help="also save the stage-1 backbone here (for --backbone-from)")
    p.add_argument("--data-cache", type=Path, default=None,
                   help="save/load the generated training images here (a .pt file; the "
                        "first --n-train of a larger cache are used)")
    p.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    p.add_argument("--name", default="fact-toy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(2)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    t = timer()
    cached = (torch.load(args.data_cache, weights_only=True)
              if args.data_cache and args.data_cache.exists() else None)
    if cached is not None and len(cached[1]) >= args.n_train:
        images, labels = cached  # the exact float32 images generate() returns
    else:
        data = generate(args.n_train, seed=TRAIN_SEED, split="train")
        images, labels = data.images, data.labels
        del data
        if args.data_cache is not None:
            torch.save((images, labels), args.data_cache)
    images, labels = images[: args.n_train], labels[: args.n_train]
    v = generate(args.n_val, seed=VAL_SEED, split="val")
    val = (v.images, v.labels)
    print(f"data: {len(images)} train / {args.n_val} val images, {since(t)}", flush=True)

    curve: list[dict] = []
    timings: dict[str, dict[str, float]] = {}
    fact = build_fact_toy(len(CLASS_NAMES))
    if args.mode == "scratch":
        t = timer()
        torch.manual_seed(args.seed)
        fact = FaCT.build(bcos_toy_resnet(len(CLASS_NAMES), FACT_TOY_WIDTHS, FACT_TOY_DEPTHS),
                          FACT_TOY_LAYER, FACT_TOY_CONCEPTS, FACT_TOY_K, seed=args.seed)
        fit(fact, images, labels, val, epochs=args.epochs, lr=args.lr,
            batch_size=args.batch_size, seed=args.seed, recon_weight=args.recon_weight,
            tag="scratch", curve=curve)
        timings["scratch"] = since(t)
    else:
        torch.manual_seed(args.seed)
        backbone = bcos_toy_resnet(len(CLASS_NAMES), FACT_TOY_WIDTHS, FACT_TOY_DEPTHS)
        t = timer()
        if args.backbone_from is not None:
            backbone.load_state_dict(load_file(str(args.backbone_from)))
        else:
            fit(Backbone(backbone), images, labels, val, epochs=args.epochs, lr=args.lr,
                batch_size=args.batch_size, seed=args.seed, recon_weight=0.0,
                tag="backbone", curve=curve)
            if args.save_backbone is not None:
                save_file({k: v.contiguous() for k, v in backbone.state_dict().items()},
                          str(args.save_backbone))
            timings["backbone"] = since(t)
        backbone_val = accuracy(Backbone(backbone), *val)
        t = timer()
        X = layer_features(backbone, FACT_TOY_LAYER, images, args.sae_per_image, args.seed)
        sae = BiasFreeTopKSAE(X.shape[1], FACT_TOY_CONCEPTS, k=FACT_TOY_K, seed=args.seed)
        sae.fit(X, epochs=args.sae_epochs, batch_size=1024, lr=1e-3)
        fact.backbone.load_state_dict(backbone.state_dict())
        fact.bottleneck(FACT_TOY_LAYER).load_state_dict(
            TopKBottleneck.from_sae(sae).state_dict())
        timings["sae"] = since(t)
        sae_val = accuracy(fact, *val)
        curve.append({"stage": "sae-inserted", "backbone_val_acc": round(backbone_val, 4),
                      "val_acc": round(sae_val, 4), "sae_loss": round(sae.loss_history_[-1], 4),
                      **timings["sae"]})
        print(json.dumps(curve[-1]), flush=True)
        if args.finetune_epochs:
            t = timer()
            fit(fact, images, labels, val, epochs=args.finetune_epochs, lr=args.finetune_lr,
                batch_size=args.batch_size, seed=args.seed + 1,
                recon_weight=args.recon_weight, tag="finetune", curve=curve)
            timings["finetune"] = since(t)

    t = timer()
    path = args.out_dir / f"{args.name}.safetensors"
    save_file({k: v.contiguous() for k, v in fact.state_dict().items()}, str(path))
    test = generate(N_TEST, seed=TEST_SEED, split="test")
    fact.load_state_dict(load_file(str(path)))
    acc = accuracy(fact, test.images, test.labels)
    print(f"{args.name}: test accuracy {acc:.4f} ({since(t)})", flush=True)
    meta = {
        "file": path.name, "mode": args.mode, "test_accuracy": round(acc, 4),
        "test_set": {"n": N_TEST, "seed": TEST_SEED, "split": "test"},
        "val_set": {"n": args.n_val, "seed": VAL_SEED, "split": "val"},
        "architecture": {"widths": FACT_TOY_WIDTHS, "depths": FACT_TOY_DEPTHS,
                         "layer": FACT_TOY_LAYER, "n_concepts": FACT_TOY_CONCEPTS,
                         "k": FACT_TOY_K},
        "parameters": sum(q.numel() for q in fact.parameters()),
        "n_train": len(images), "curve": curve, "timings": timings,
        "train_wall_s": round(sum(v["wall_s"] for v in timings.values()), 1),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()
                 if k not in ("out_dir", "data_cache", "save_backbone")},
        "file_bytes": path.stat().st_size,
    }
    (args.out_dir / f"{args.name}.json").write_text(json.dumps(meta, indent=2) + "\n")


if __name__ == "__main__":
    main()
