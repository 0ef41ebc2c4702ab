"""Train the toy models on the synthetic benchmark and write their checkpoints.

Reproduces ``src/ierf/models/weights/{name}.safetensors`` and ``toy_models.json``
on a CPU. The committed checkpoints came from the runs below (``toy_models.json`` records
each model's epochs, training-set size, initialisation and training time)::

    PYTHONPATH=src python scripts/train_toy_models.py --models toy-resnet toy-vgg
    PYTHONPATH=src python scripts/train_toy_models.py --models toy-vit --epochs 10
    PYTHONPATH=src python scripts/train_toy_models.py --init-from toy-resnet --epochs 1 \
        --n-train 6000 --models toy-resnet-elu toy-resnet-leakyrelu toy-resnet-silu \
        toy-resnet-gelu

The activation variants are fine-tuned from the ReLU toy-resnet (same architecture, the
activation swapped), one epoch each, to keep the whole set reproducible in minutes. Tanh
saturates when started from ReLU weights, so toy-resnet-tanh is trained from scratch and
then continued from itself (its ``schedule`` entry in ``toy_models.json``)::

    A="--models toy-resnet-tanh --n-train 6000"
    PYTHONPATH=src python scripts/train_toy_models.py $A --epochs 4
    PYTHONPATH=src python scripts/train_toy_models.py $A --init-from toy-resnet-tanh --epochs 3 --lr 2e-3
    PYTHONPATH=src python scripts/train_toy_models.py $A --init-from toy-resnet-tanh --epochs 2 --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ierf.data.synthetic import CLASS_NAMES, generate, interventions
from ierf.models.toy import TOY_MEAN, TOY_MODELS, TOY_STD, build_toy

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "src" / "ierf" / "models" / "weights"
TRAIN_SEED, TEST_SEED, N_TEST, N_CAUSAL = 0, 1234, 2000, 500


@dataclass(frozen=True)
class Recipe:
    """Optimiser settings of one model."""

    epochs: int
    lr: float
    weight_decay: float


RECIPES: dict[str, Recipe] = {
    "toy-vgg": Recipe(epochs=8, lr=2e-3, weight_decay=1e-4),
    "toy-vit": Recipe(epochs=10, lr=1e-3, weight_decay=0.05),
}
RESNET_RECIPE = Recipe(epochs=4, lr=3e-3, weight_decay=1e-4)


def normalise(x: Tensor) -> Tensor:
    """Map images in [0, 1] to the toy models' input range."""
    mean = torch.tensor(TOY_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(TOY_STD).view(1, 3, 1, 1)
    return (x - mean) / std


@torch.no_grad()
def predict(model: nn.Module, images: Tensor, batch_size: int = 500) -> Tensor:
    """Softmax probabilities of ``model`` (in eval mode) for images in [0, 1]."""
    model.eval()
    return torch.cat([model(normalise(x)).softmax(1) for x in images.split(batch_size)])


def causal_drop_rates(model: nn.Module, n: int, seed: int) -> tuple[float, float]:
    """Fraction of test scenes whose true class is lost when removing a key part / a distractor.

    A scene counts when the true-class probability drops by more than 0.5 or
    the argmax moves away from the true class.
    """
    iv = interventions(n, seed=seed, split="test")
    labels = iv.original.labels
    p0 = predict(model, iv.original.images)
    rates = []
    for images in (iv.without_key, iv.without_distractor):
        p = predict(model, images)
        true0, true1 = p0[torch.arange(n), labels], p[torch.arange(n), labels]
        lost = (true0 - true1 > 0.5) | ((p0.argmax(1) == labels) & (p.argmax(1) != labels))
        rates.append(lost.float().mean().item())
    return rates[0], rates[1]


def train(name: str, images: Tensor, labels: Tensor, recipe: Recipe, seed: int,
          init: Path | None = None) -> nn.Module:
    """Train one model with AdamW, a one-cycle schedule and random horizontal flips,
    from random weights or from the checkpoint ``init`` (same architecture)."""
    torch.manual_seed(seed)
    model = build_toy(name, num_classes=len(CLASS_NAMES))
    if init is not None:
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in load_file(str(init)).items()})
    batch_size = 128
    steps = recipe.epochs * (len(images) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=steps)
    for epoch in range(recipe.epochs):
        model.train()
        order = torch.randperm(len(images))
        total, correct, loss_sum = 0, 0, 0.0
        for idx in order[: len(order) // batch_size * batch_size].split(batch_size):
            x, y = images[idx], labels[idx]
            flip = torch.rand(len(x)) < 0.5
            x = torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)
            logits = model(normalise(x))
            loss = F.cross_entropy(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(y)
            correct += (logits.argmax(1) == y).sum().item()
            loss_sum += loss.item() * len(y)
        print(f"  {name} epoch {epoch + 1}/{recipe.epochs}: loss {loss_sum / total:.3f} "
              f"train acc {correct / total:.3f}", flush=True)
    return model.eval()


def save(model: nn.Module, path: Path) -> None:
    """Save the state dict with floating-point tensors in float16."""
    state = {k: (v.half() if v.is_floating_point() else v).contiguous()
             for k, v in model.state_dict().items()}
    save_file(state, str(path))


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=TOY_MODELS, choices=TOY_MODELS)
    parser.add_argument("--epochs", type=int, default=None, help="override every recipe's epochs")
    parser.add_argument("--lr", type=float, default=None, help="override every recipe's peak lr")
    parser.add_argument("--n-train", type=int, default=16000)
    parser.add_argument("--out-dir", type=Path, default=WEIGHTS_DIR)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--init-from", default=None, choices=TOY_MODELS,
                        help="start from this model's checkpoint in --out-dir (e.g. fine-tune "
                             "the activation variants from toy-resnet)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    args.out_dir.mkdir(parents=True, exist_ok=True)

    t0 = time.time()
    train_set = generate(args.n_train, seed=TRAIN_SEED, split="train")
    images, labels = train_set.images, train_set.labels
    del train_set  # free the per-pixel ground truth, training needs images and labels only
    test_set = generate(N_TEST, seed=TEST_SEED, split="test")
    print(f"generated {args.n_train} train / {N_TEST} test images in {time.time() - t0:.1f}s")

    index_path = args.out_dir / "toy_models.json"
    for name in args.models:
        recipe = RECIPES.get(name, RESNET_RECIPE)
        recipe = Recipe(args.epochs or recipe.epochs, args.lr or recipe.lr, recipe.weight_decay)
        t0 = time.time()
        init = args.out_dir / f"{args.init_from}.safetensors" if args.init_from else None
        model = train(name, images, labels, recipe, args.seed, init)
        seconds = time.time() - t0
        path = args.out_dir / f"{name}.safetensors"
        save(model, path)
        # Evaluate the weights as stored (float16 -> float32), as users will load them.
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in load_file(str(path)).items()})
        acc = (predict(model, test_set.images).argmax(1) == test_set.labels).float().mean().item()
        key_rate, distractor_rate = causal_drop_rates(model, N_CAUSAL, TEST_SEED)
        index = json.loads(index_path.read_text()) if index_path.exists() else {}
        index[name] = {
            "file": path.name,
            "test_accuracy": round(acc, 4),
            "test_set": {"n": N_TEST, "seed": TEST_SEED, "split": "test"},
            "key_part_removal_drop_rate": round(key_rate, 4),
            "distractor_removal_drop_rate": round(distractor_rate, 4),
            "parameters": sum(p.numel() for p in model.parameters()),
            "train_seconds": round(seconds, 1),
            "epochs": recipe.epochs,
            "n_train": args.n_train,
            "init_from": args.init_from,
            "seed": args.seed,
            "file_bytes": path.stat().st_size,
        }
        print(f"{name}: test acc {acc:.4f}, key-removal drop {key_rate:.3f}, "
              f"distractor-removal drop {distractor_rate:.3f}, {seconds:.0f}s", flush=True)
        index = {k: index[k] for k in TOY_MODELS if k in index}
        index_path.write_text(json.dumps(index, indent=2) + "\n")


if __name__ == "__main__":
    main()
