"""`ierf cafe train-sae` and `ierf cafe ground`: SAE latents grounded in their iERFs (CAFE)."""

from __future__ import annotations

import argparse
from pathlib import Path

#: :data:`ierf.cafe.training.TRAIN_METHODS` and :data:`ierf.cafe.attribution.METHODS`, here
#: so that ``--help`` needs no torch
SAE_METHOD_NAMES = ("sae", "topk-sae", "matryoshka-sae", "bias-free-topk-sae",
                    "minibatch-kmeans")
CAFE_METHOD_NAMES = ("attnlrp", "srd", "integrated-gradients", "gradient", "grad-x-input",
                     "kernelshap")
TOKEN_CHOICES = ("patch", "cls", "all")


def register(sub: argparse._SubParsersAction) -> None:
    """Add the ``cafe`` group with its ``train-sae`` and ``ground`` actions."""
    c = sub.add_parser("cafe", help="CAFE: SAE latents of a ViT's tokens grounded in their "
                       "iERFs (paper Sec. V)")
    csub = c.add_subparsers(required=True, metavar="ACTION")

    t = csub.add_parser("train-sae", help="train SAEs per layer on tokens streamed over an "
                        "image set (resumable; data-parallel under torchrun)")
    t.add_argument("--model", required=True, help="model name (see `ierf models`)")
    _images(t, "train")
    t.add_argument("--layers", required=True, help="comma-separated layers (e.g. "
                   "blocks.1,blocks.3)")
    t.add_argument("--tokens", default="patch", help="patch, cls or all (CLS and patch tokens "
                   "in one SAE); a comma list trains one SAE per kind (default patch)")
    t.add_argument("--method", default="matryoshka-sae", choices=SAE_METHOD_NAMES,
                   help="SAE (default matryoshka-sae, as the paper), or minibatch-kmeans: "
                   "spherical k-means trained from the same token stream")
    t.add_argument("--n-concepts", type=int, help="latents K (default 8 × channels)")
    t.add_argument("--k", type=int, default=8, help="active latents per token, TopK family "
                   "(default 8)")
    t.add_argument("--l1", type=float, default=1e-2, help="λ of Eq. 9 for --method sae")
    t.add_argument("--epochs", type=int, default=1, help="passes over the images (default 1)")
    t.add_argument("--passes", type=int, default=1,
                   help="Adam passes over each full buffer (default 1)")
    t.add_argument("--batch-size", type=int, default=256, help="tokens per step (default 256)")
    t.add_argument("--buffer", type=int, default=65536,
                   help="tokens held per SAE before a shuffle (default 65536)")
    t.add_argument("--image-batch", type=int, default=32,
                   help="images per forward pass (default 32)")
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--checkpoint-every", type=int, default=20,
                   help="image batches between checkpoints (default 20)")
    _common(t)
    t.add_argument("-o", "--out", required=True, help="output folder: one concept basis per "
                   "<layer>-<tokens>; re-running the same command resumes")
    t.set_defaults(run=_train)

    g = csub.add_parser("ground", help="per latent: top images, activation maps, iERFs, "
                        "non-locality statistics and PNG panels (Fig. 8)")
    g.add_argument("basis", help="SAE basis folder (from `ierf cafe train-sae`)")
    _images(g, "val")
    g.add_argument("--latents", help="comma-separated latent indices (default: the "
                   "strongest of those active on at most half of the images)")
    g.add_argument("--n-latents", type=int, default=8,
                   help="latents when --latents is not given (default 8)")
    g.add_argument("--top", type=int, default=4, help="top images per latent (default 4)")
    g.add_argument("--method", default="attnlrp", choices=CAFE_METHOD_NAMES,
                   help="attribution method of the iERFs (default attnlrp)")
    g.add_argument("--readout", default="peak", choices=("peak", "sum"),
                   help="z_k(I): the latent at its firing token (peak) or summed over tokens")
    g.add_argument("--blank", default="zero", choices=("zero", "mean", "blur"),
                   help="reference input of integrated-gradients and kernelshap: zeros after "
                   "normalisation (default), the mean image, or a blurred copy (docs/cafe.md)")
    _common(g)
    g.add_argument("-o", "--out", required=True, help="output folder")
    g.set_defaults(run=_ground)
    from ierf.cli.cafe_report import register as add_report  # the dashboard (explorer)
    add_report(csub)


def _images(p: argparse.ArgumentParser, split: str) -> None:
    p.add_argument("--images", required=True, help="benchmark[:<seed>:<split>] (synthetic "
                   f"scenes; default split {split}), photos, or a folder of images")
    p.add_argument("--n", "--num-images", type=int, dest="n", help="number of images "
                   "(required for benchmark; default: all photos / files; under torchrun spell "
                   "it --num-images, as torchrun takes --n for its own --nnodes…)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--weights", default="pretrained", help="the model's weights: pretrained "
                   "(default), a state-dict file (.pth / .safetensors), or an OpenCLIP tag "
                   "(openai, laion2b_…) for openclip/<arch> models")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def image_stream(text: str, n: int | None, model: object, split: str) -> object:
    """The images of ``--images`` / ``--n`` as an :class:`ierf.cafe.streaming.SourceImages`."""
    from ierf.cafe.streaming import SourceImages
    from ierf.data.sources import image_ids, parse_source

    source = parse_source(text).resolved(0, split)
    return SourceImages(source, image_ids(source, n), model)


def _train(args: argparse.Namespace) -> int:
    from ierf.cafe.training import SAETrainer, SAETraining
    from ierf.models import load_model

    model = load_model(args.model, weights=args.weights)
    model.net.to(args.device)
    config = SAETraining(method=args.method, n_concepts=args.n_concepts, k=args.k,
                         l1_coeff=args.l1, epochs=args.epochs, passes=args.passes,
                         batch_size=args.batch_size, buffer_tokens=args.buffer,
                         image_batch=args.image_batch, lr=args.lr, seed=args.seed)
    images = image_stream(args.images, args.n, model, "train")
    trainer = SAETrainer(model, images, _split(args.layers), args.out, _split(args.tokens),
                         config, args.device)
    trainer.checkpoint_every = max(1, args.checkpoint_every)
    bases = trainer.run(progress=not args.no_progress)
    for name, basis in bases.items() if trainer.rank == 0 else ():
        print(f"{name}: {basis!r} ({basis.provenance.get('steps')} steps, final loss "
              f"{basis.provenance.get('final_loss')}) → {Path(args.out) / name}/")
    return 0


def _ground(args: argparse.Namespace) -> int:
    from ierf.cafe.ground import ground
    from ierf.concepts.basis import ConceptBasis
    from ierf.models import load_model

    basis = ConceptBasis.load(args.basis, device=args.device)
    model = load_model(basis.model, weights=args.weights)
    model.net.to(args.device)
    images = image_stream(args.images, args.n, model, "val")
    latents = [int(i) for i in _split(args.latents)] if args.latents else None
    result = ground(model, basis, images, latents, n_latents=args.n_latents, top=args.top,
                    method=args.method, readout=args.readout, blank=args.blank,
                    progress=not args.no_progress)
    # a state-dict file is recorded by its full path; names and tags (pretrained, openai) as given
    weights = str(Path(args.weights).resolve()) if Path(args.weights).is_file() else args.weights
    sources = {"basis": {"path": args.basis, "resolved": str(Path(args.basis).resolve())},
               "weights": weights, "images": str(images.source), "n": len(images)}
    written = result.write(args.out, model, [images.ids[i] for i in result.image_ids.tolist()],
                           sources)
    for row in result.latent_rows():
        head = f"{'CLS latent' if row['tokens'] == 'cls' else 'latent'} {row['latent']}: " \
               f"fires on {row['fires_on']:.1%} of images, top z {row['top_activation']:.3g}; "
        if row["tokens"] == "cls":
            print(head + f"no firing patch: iERF spread {row['spread']:.2f} patches, mass "
                  f"outside its own peak's 3×3 {row['outside_self']:.2f}")
        else:
            print(head + f"iERF mass outside the firing token's 3×3 {row['outside']:.2f} "
                  f"(uniform {row['chance_outside']:.2f}), firing token to iERF centre "
                  f"{row['distance']:.2f} patches")
    print(f"→ {len(written) - 4} panels, latents.csv, pairs.csv, maps.safetensors, "
          f"grounding.json in {args.out}/")
    return 0


def _split(text: str | None) -> list[str]:
    return [s.strip() for s in (text or "").split(",") if s.strip()]
