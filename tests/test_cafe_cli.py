"""`ierf cafe train-sae | ground` and `ierf bench cafe`, end to end on toy-vit, and their
refusals (nothing is written when the input is bad)."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file

from ierf.cli import bench_cafe, cafe
from ierf.concepts.basis import BasisMismatchError, ConceptBasis
from ierf.concepts.extractors import TopKSAE
from ierf.errors import IerfError
from ierf.models import load_model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: see conftest.py


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="ierf")
    sub = p.add_subparsers(required=True)
    cafe.register(sub)
    bench = sub.add_parser("bench").add_subparsers(required=True)
    bench_cafe.register(bench)
    return p.parse_args(argv)


def run(argv: list[str]) -> int:
    args = parse(argv)
    return args.run(args)


@pytest.fixture(scope="module")
def saes(tmp_path_factory):
    out = tmp_path_factory.mktemp("cafe") / "sae"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run(["cafe", "train-sae", "--model", "toy-vit", "--images", "benchmark:0:train",
                    "--n", "16", "--layers", "blocks.1", "--tokens", "patch,cls",
                    "--n-concepts", "16", "--k", "2", "--batch-size", "16", "--buffer", "64",
                    "--image-batch", "8", "--passes", "2", "-o", str(out),
                    "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out


def test_train_sae_writes_one_basis_per_layer_and_kind(saes) -> None:
    patch, cls = (ConceptBasis.load(saes / f"blocks.1-{k}") for k in ("patch", "cls"))
    assert (patch.tokens, cls.tokens, patch.layer) == ("patch", "cls", "blocks.1")
    assert patch.provenance["images"] == "benchmark:0:train[16]"
    assert patch.provenance["training"]["passes"] == 2


@pytest.mark.parametrize("kind", ["patch", "cls"])
def test_ground_writes_panels_and_statistics(saes, tmp_path, capsys, kind) -> None:
    out = tmp_path / "ground"
    assert run(["cafe", "ground", str(saes / f"blocks.1-{kind}"), "--images", "benchmark",
                "--n", "6", "--n-latents", "2", "--top", "2", "-o", str(out),
                "--no-progress"]) == 0
    panels = sorted(out.glob("latent-*.png"))
    assert len(panels) == 2 and (out / "latents.csv").is_file()
    maps = load_file(out / "maps.safetensors")
    assert maps["ierfs"].shape[1:] == (64, 64) and maps["activations"].shape[1] == 64
    assert maps["activations"].isnan().all() == (kind == "cls")
    rows = (out / "pairs.csv").read_text().splitlines()
    assert rows[0].startswith("latent,image,position,activation,outside")
    assert len(rows) >= 3
    text = capsys.readouterr().out
    assert "fires on" in text and ("CLS latent" in text) == (kind == "cls")
    # the provenance `ierf cafe report` reloads the model, the basis and the images from
    basis = ConceptBasis.load(saes / f"blocks.1-{kind}")
    rec = json.loads((out / "grounding.json").read_text())
    assert (rec["format"], rec["format_version"]) == ("ierf-cafe-grounding", 1)
    assert rec["basis"] == {"path": str(saes / f"blocks.1-{kind}"),
                            "resolved": str((saes / f"blocks.1-{kind}").resolve())}
    assert (rec["model"], rec["fingerprint"], rec["weights"]) == \
        (basis.model, basis.fingerprint, "pretrained")
    assert (rec["layer"], rec["tokens"], rec["method"], rec["readout"], rec["blank"]) == \
        ("blocks.1", kind, "attnlrp", "peak", "zero")
    assert (rec["images"], rec["n"]) == ("benchmark:0:val", 6)
    assert sorted(rec["latents"]) == sorted(set(maps["latent"].tolist()))


def test_bench_cafe_prints_the_table_and_resumes(saes, tmp_path, capsys) -> None:
    argv = ["bench", "cafe", str(saes / "blocks.1-patch"), str(saes / "blocks.1-cls"),
            "--n", "8", "--latents", "2", "--per-latent", "2", "--rankings",
            "attnlrp,activation,random", "--blanks", "zero,blur", "--steps", "4",
            "-o", str(tmp_path)]
    assert run(argv) == 0
    first = capsys.readouterr()
    assert "CAFE insertion AUC" in first.out and "blocks.1 cls" in first.out
    assert "attnlrp on" in first.err                     # computed
    row = next(line for line in first.out.splitlines() if line.startswith("| activation"))
    assert row.rstrip(" |").endswith("–")                # no activation ranking for CLS
    assert "τ(zero,blur)" in first.out
    for name in ("insertion-zero", "insertion-blur", "nonlocality"):
        assert (tmp_path / name / "table.md").is_file()
    assert (tmp_path / "curves.png").is_file()
    assert run(argv) == 0
    again = capsys.readouterr()
    assert "attnlrp on" not in again.err                 # resumed from results.sqlite
    assert again.out == first.out


def test_bad_input_is_refused_before_writing(saes, tmp_path, toy) -> None:
    out = tmp_path / "never"
    basis = str(saes / "blocks.1-patch")
    with pytest.raises(IerfError, match="latent 99 is out of range: this basis has 16"):
        run(["cafe", "ground", basis, "--images", "benchmark", "--n", "4", "--latents",
             "1,99", "-o", str(out)])
    with pytest.raises(IerfError, match="image set too small: 2 images for the top 4"):
        run(["cafe", "ground", basis, "--images", "benchmark", "--n", "2", "-o", str(out)])
    with pytest.raises(IerfError, match="toy-resnet has no CLS token"):
        run(["cafe", "train-sae", "--model", "toy-resnet", "--images", "benchmark", "--n",
             "4", "--layers", "layer1", "--tokens", "cls", "-o", str(out)])
    with pytest.raises(IerfError, match="image set too small"):
        run(["cafe", "train-sae", "--model", "toy-vit", "--images", "benchmark", "--n", "2",
             "--layers", "blocks.1", "--tokens", "cls", "-o", str(out), "--no-progress"])
    # a basis of another model, and one of other weights under the same model name
    other = ConceptBasis.bind(TopKSAE(16, 8, k=2), toy, "layer1")
    other.save(tmp_path / "resnet")
    with pytest.raises(IerfError, match="different models"):
        run(["bench", "cafe", basis, str(tmp_path / "resnet"), "--n", "4", "-o", str(out)])
    torch.manual_seed(0)
    ConceptBasis.bind(TopKSAE(96, 8, k=2), load_model("toy-vit", weights=None),
                      "blocks.1").save(tmp_path / "random-vit")
    with pytest.raises(BasisMismatchError, match="weights differ"):
        run(["cafe", "ground", str(tmp_path / "random-vit"), "--images", "benchmark", "--n",
             "4", "-o", str(out)])
    assert not out.exists()


def test_bench_refuses_bad_bases_and_too_few_images_leaving_no_store(saes, tmp_path, toy_vit
                                                                     ) -> None:
    """Everything is checked before results.sqlite is created: a failed run does not leave
    a store whose settings would refuse the corrected run in the same folder."""
    from ierf.models.fingerprint import weights_fingerprint

    out = tmp_path / "bench"
    good = str(saes / "blocks.1-patch")
    fingerprint = weights_fingerprint(toy_vit.net)
    ConceptBasis(TopKSAE(96, 8, k=2), "toy-vit", fingerprint, "blocks.9").save(
        tmp_path / "no-layer")
    ConceptBasis(TopKSAE(48, 8, k=2), "toy-vit", fingerprint, "blocks.1").save(
        tmp_path / "narrow")
    common = ["--n", "6", "--latents", "1", "--rankings", "random", "--steps", "2",
              "-o", str(out)]
    with pytest.raises(IerfError, match="unknown layer 'blocks.9'"):
        run(["bench", "cafe", good, str(tmp_path / "no-layer"), *common])
    with pytest.raises(BasisMismatchError, match="48-channel concepts of layer 'blocks.1'; "
                       "got PFVs with 96 channels"):
        run(["bench", "cafe", str(tmp_path / "narrow"), *common])
    with pytest.raises(IerfError, match="image set too small: no latent fires on 8 of these 6"):
        run(["bench", "cafe", good, *common, "--per-latent", "8"])
    assert not out.exists()
    assert run(["bench", "cafe", good, *common, "--per-latent", "2"]) == 0   # same folder
    assert (out / "results.sqlite").is_file()


@pytest.fixture(scope="module")
def cnn_sae(tmp_path_factory):
    """A Matryoshka SAE on toy-resnet's layer2 PFVs (a CNN's tokens are its feature-map
    positions; IERF Sec. V-C)."""
    out = tmp_path_factory.mktemp("cafe-cnn") / "sae"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert run(["cafe", "train-sae", "--model", "toy-resnet", "--images",
                    "benchmark:0:train", "--n", "4", "--layers", "layer2", "--n-concepts", "16",
                    "--k", "2", "--batch-size", "64", "--buffer", "256", "--image-batch", "4",
                    "-o", str(out), "--no-progress"]) == 0
    finally:
        torch.set_num_threads(threads)
    return out / "layer2-patch"


def test_train_sae_on_cnn_pfvs(cnn_sae, toy) -> None:
    basis = ConceptBasis.load(cnn_sae)
    basis.check(toy)
    pfvs = toy.pfvs(torch.zeros(1, *toy.input_size), ["layer2"])["layer2"]
    assert (basis.model, basis.layer, basis.tokens) == ("toy-resnet", "layer2", "patch")
    assert basis.dictionary.shape == (pfvs.vectors.shape[-1], 16)
    assert basis.provenance["steps"] == 4 * pfvs.vectors.shape[1] // 64   # every PFV once


def test_ground_cnn_latents_with_srd(cnn_sae, tmp_path) -> None:
    out = tmp_path / "ground"
    assert run(["cafe", "ground", str(cnn_sae), "--images", "benchmark", "--n", "6",
                "--n-latents", "2", "--top", "2", "--method", "srd", "-o", str(out),
                "--no-progress"]) == 0
    assert len(sorted(out.glob("latent-*.png"))) == 2
    assert json.loads((out / "grounding.json").read_text())["method"] == "srd"
