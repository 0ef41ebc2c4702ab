"""CAFE on toy-vit (IERF Sec. V): SAEs per layer, insertion AUC (Fig. 7), non-locality
(Fig. 8), ground truth on the synthetic benchmark, and the speed of batched latent iERFs.

1. SAEs with the streaming trainer (cached in ``OUT/sae``): a Matryoshka SAE on the patch
   tokens of each block (K = 768, k = 16; 1000 train scenes, 2 epochs) and one on the CLS
   token of each block (K = 96, k = 4; 1000 CLS tokens, 50 passes over the buffer).
2. Insertion AUC of every ranking on every basis, for the three blanks (peak readout) and
   for the summed readout on the zero blank (patch latents: a CLS latent's readouts are
   the same); non-locality of the AttnLRP iERFs; whether the
   ranking of methods depends on the blank (Kendall's τ). IG and KernelSHAP take each blank
   as their baseline (``CafeBench.baseline="blank"``). Resumable (``OUT/bench-*``).
3. Ground truth: a patch latent per part type and a CLS latent per class, chosen by AUROC on
   400 train scenes, scored on 200 test scenes by each attribution method.
4. Latent iERFs of 32 pairs in one batched call vs one pair at a time (ratio, same process).

Run::

    PYTHONPATH=src .venv/bin/python benchmarks/bench_cafe.py [--out DIR] [--quick]

SAE training runs on one thread: its small steps are 25–60× slower on two threads of a
busy 2-core machine (OpenMP barriers waiting for the other core); everything else on two.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from ierf.cafe.attribution import METHODS, latent_ierfs
from ierf.cafe.bench import (
    CafeBench,
    insertion_table,
    kendall_tau,
    locality_table,
    ranking_order,
    run,
)
from ierf.cafe.ground_truth import paired_summary, study
from ierf.cafe.latents import latent_activations, select_pairs, token_positions
from ierf.cafe.panels import save_insertion_figure
from ierf.cafe.streaming import SourceImages
from ierf.cafe.training import SAETrainer, SAETraining
from ierf.data.sources import image_ids, parse_source
from ierf.data.synthetic import generate
from ierf.models import load_model

LAYERS = ["blocks.0", "blocks.1", "blocks.2", "blocks.3"]


def train(model, out: Path, n: int, quick: bool) -> list:
    source = parse_source("benchmark:0:train")
    images = SourceImages(source, image_ids(source, n), model)
    patch = SAETraining(n_concepts=768, k=16, epochs=1 if quick else 2, batch_size=256,
                        buffer_tokens=16384, image_batch=50)
    cls = SAETraining(n_concepts=96, k=4, passes=50, batch_size=64, buffer_tokens=4096,
                      image_batch=50)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        start = time.perf_counter()
        bases = SAETrainer(model, images, LAYERS, out / "patch", ["patch"], patch).run()
        bases.update(SAETrainer(model, images, LAYERS, out / "cls", ["cls"], cls).run())
        print(f"SAEs: {time.perf_counter() - start:.0f} s")
    finally:
        torch.set_num_threads(threads)
    return [bases[f"{layer}-{kind}"] for kind in ("patch", "cls") for layer in LAYERS]


def speed(model, basis, x, methods=("attnlrp", "srd", "integrated-gradients")) -> str:
    acts = latent_activations(model, basis, x)
    positions = token_positions(basis, model.pfvs(x[:1], basis.layer)[basis.layer])
    latents = (acts > 0).any(1).sum(0).topk(8).indices
    pairs = select_pairs(acts, positions, latents, 4)
    lines = []
    for method in methods:
        latent_ierfs(model, basis, x, pairs[:2], method)                     # warm-up
        start = time.perf_counter()
        latent_ierfs(model, basis, x, pairs, method)
        batched = time.perf_counter() - start
        start = time.perf_counter()
        for i in range(len(pairs)):
            latent_ierfs(model, basis, x, pairs[i:i + 1], method)
        single = time.perf_counter() - start
        lines.append(f"| {method} | {len(pairs)} | {batched:.2f} | {single:.2f} | "
                     f"{single / batched:.1f}× |")
    return "\n".join(["| method | pairs | batched s | one at a time s | speed-up |",
                      "|---|---:|---:|---:|---:|", *lines])


def ground_truth(model, bases, n_sel: int, n_eval: int, per_group: int) -> str:
    selection = generate(n_sel, seed=5, split="train")
    evaluation = generate(n_eval, seed=5, split="test")
    lines = [("| basis | known latents (AUROC) | method | iERF mass | activation mass | "
              "chance | iERF − activation (± SEM) | pairs |"),
             "|---|---|---|---:|---:|---:|---:|---:|"]
    for basis in bases:
        kind = "class" if basis.tokens == "cls" else "part"
        for method in METHODS:
            r = study(model, basis, selection, evaluation, kind, per_group, method)
            s = paired_summary(r["ierf"], r["activation"])
            lines.append(f"| {basis.layer} {basis.tokens} | {kind}: "
                         f"{r['auroc'].min():.2f}–{r['auroc'].max():.2f} | {method} | "
                         f"{s['a']:.3f} | {s['b']:.3f} | {r['chance'].mean():.3f} | "
                         f"{s['diff']:+.3f} ± {s['se']:.3f} | {s['n']} |")
        print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=Path("bench-cafe-out"))
    p.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    args = p.parse_args()
    torch.set_num_threads(2)
    quick = args.quick
    model = load_model("toy-vit")
    bases = train(model, args.out / "sae", 200 if quick else 1000, quick)
    x = model.normalize(generate(24 if quick else 64, seed=0, split="val").images)
    report = [f"# CAFE on toy-vit ({'quick' if quick else 'full'} run)", ""]
    runs = [("peak", ("zero", "mean", "blur")), ("sum", ("zero",))]
    for readout, blanks in runs:
        bench = CafeBench(blanks=blanks, readout=readout, n_latents=6 if quick else 16,
                          per_latent=4)
        start = time.perf_counter()
        chosen = bases if readout == "peak" else [b for b in bases if b.tokens == "patch"]
        results = run(model, chosen, x, bench, args.out / f"bench-{readout}.sqlite",
                      f"benchmark:0:val[{len(x)}]", log=lambda m: print(m, flush=True))
        print(f"bench {readout}: {time.perf_counter() - start:.0f} s")
        for blank in blanks:
            table = insertion_table(results, bench.rankings, blank, f"toy-vit, readout={readout}")
            table.write(args.out / f"insertion-{readout}-{blank}")
            report += [table.markdown(), ""]
        if readout == "peak":
            table = locality_table(results, bench.locality_method, "toy-vit")
            table.write(args.out / "nonlocality")
            report += [table.markdown(), ""]
        orders = {b: ranking_order(results, bench.rankings, b) for b in blanks}
        for label in orders[blanks[0]]:
            taus = ", ".join(f"τ({blanks[0]},{b}) = "
                             f"{kendall_tau(orders[blanks[0]][label], orders[b][label]):.2f}"
                             for b in blanks[1:])
            report.append(f"- {readout} · {label}: " + " | ".join(
                f"{b}: {' > '.join(orders[b][label])}" for b in blanks) + (f" · {taus}"
                                                                            if taus else ""))
        report.append("")
        curves = {r.label: {k: c for (k, b), c in r.curves.items() if b == "zero"}
                  for r in results}
        save_insertion_figure(curves, args.out / f"curves-{readout}.png",
                              f"CAFE insertion · toy-vit · readout={readout} · blank=zero")
    start = time.perf_counter()
    report += ["## Ground truth", "", ground_truth(model, [b for b in bases if b.layer in
                                                           ("blocks.1", "blocks.3")],
                                                   100 if quick else 400,
                                                   50 if quick else 200, 4 if quick else 8), ""]
    print(f"ground truth: {time.perf_counter() - start:.0f} s")
    report += ["## Batched latent iERFs vs one pair at a time", "",
               speed(model, bases[1], x[:16]), ""]
    text = "\n".join(report)
    (args.out / "report.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
