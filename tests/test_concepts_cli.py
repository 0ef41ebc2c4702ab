"""`ierf concepts fit`, `ierf concepts cards` and `ierf bench concepts` on a tiny atlas."""

from __future__ import annotations

import csv
import re

import pytest
import torch
from PIL import Image

from ierf.atlas.store import open_atlas
from ierf.cli import main
from ierf.concepts.basis import ConceptBasis
from ierf.concepts.fitting import fit_concepts, layer_center
from ierf.models.fingerprint import weights_fingerprint
from ierf.viz.cards import CARD_KEY_HEIGHT

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def atlas(tmp_path_factory):
    path = tmp_path_factory.mktemp("atlas") / "toy"
    assert main(["atlas", "build", "--model", "toy-resnet", "--images", "benchmark", "--n", "24",
                 "--layers", "layer2,layer3", "--samples-per-image", "2", "--out",
                 str(path)]) == 0
    return path


def test_fit_saves_what_fit_concepts_learns(atlas, tmp_path, capsys) -> None:
    out = tmp_path / "km"
    assert main(["concepts", "fit", str(atlas), "--layer", "layer3", "--n-concepts", "8",
                 "--out", str(out)]) == 0
    assert "8 concepts (centred by μ_BN)" in capsys.readouterr().out
    basis = ConceptBasis.load(out)
    loaded = basis.extractor
    a = open_atlas(atlas)
    expected = fit_concepts(a.pfvs("layer3"), "kmeans", 8,
                            center=layer_center(a.model(), "layer3"))
    torch.testing.assert_close(loaded.get_dictionary(), expected.get_dictionary())
    torch.testing.assert_close(loaded.center, expected.center)
    # bound to the atlas' model and layer, with its provenance
    assert (basis.model, basis.layer, basis.tokens) == ("toy-resnet", "layer3", "patch")
    assert basis.fingerprint == weights_fingerprint(a.model().net)
    assert basis.provenance["atlas"] == str(a.path.resolve()) and basis.provenance["centred"]
    assert basis.provenance["n_pfvs"] == len(a.pfvs("layer3"))
    # default output inside the atlas, an SAE
    assert main(["concepts", "fit", str(atlas), "--layer", "layer2", "--method", "topk-sae",
                 "--n-concepts", "16", "--epochs", "2"]) == 0
    sae = ConceptBasis.load(atlas / "concepts" / "layer2-topk-sae")
    assert sae.get_dictionary().shape == (32, 16) and sae.layer == "layer2"


def test_cards(atlas, tmp_path, capsys) -> None:
    concepts = tmp_path / "km"
    assert main(["concepts", "fit", str(atlas), "--layer", "layer3", "--n-concepts", "6",
                 "--out", str(concepts)]) == 0
    out = tmp_path / "cards"
    assert main(["concepts", "cards", str(atlas), str(concepts), "--rows", "4", "--k", "5",
                 "--out", str(out)]) == 0
    width, height = Image.open(out / "cards-layer3.png").size
    assert (width, height) == (round((1.3 * 5 + 1) * 80),
                               round((1.3 * 4 + 0.4 + CARD_KEY_HEIGHT) * 80))
    assert (out / "locations-layer3-image0.png").is_file()
    # the layer comes from the basis, never from the channel width: a layer2 basis draws layer2
    assert main(["concepts", "fit", str(atlas), "--layer", "layer2", "--n-concepts", "6",
                 "--out", str(tmp_path / "km2")]) == 0
    assert main(["concepts", "cards", str(atlas), str(tmp_path / "km2"), "--rows", "2", "--k",
                 "3", "--out", str(out)]) == 0
    assert (out / "cards-layer2.png").is_file()


def test_bench_concepts_table(atlas, tmp_path, capsys) -> None:
    out = tmp_path / "bench"
    assert main(["bench", "concepts", str(atlas), "--layer", "layer3", "--methods",
                 "kmeans,topk-sae", "--n-concepts", "8", "--images", "4", "--ig-steps", "8",
                 "--epochs", "2", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    printed = captured.out
    assert "| kmeans | 8 |" in printed and "| topk-sae | 8 |" in printed
    # one line per step with its seconds, for each method
    progress = captured.err
    assert "[1/2] kmeans" in progress and "[2/2] topk-sae" in progress
    for label in ("fit kmeans", "class relevance", "C-insertion and C-deletion", "ground truth"):
        assert re.search(rf"{label}.* \d+\.\d s", progress), label
    with open(out.with_suffix(".csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert [r["method"] for r in rows] == ["kmeans", "topk-sae"]
    for r in rows:
        assert 0 <= float(r["c_del_auc"]) <= 1 and 0 <= float(r["c_ins_auc"]) <= 1
        assert 0 <= float(r["l0_ratio"]) <= 1 and float(r["rel_l2"]) >= 0
        assert float(r["nmi"]) > float(r["nmi_shuffled"])          # the benchmark's labels
        assert r["parts_recovered"].endswith("/5")
    assert out.with_suffix(".md").read_text().startswith("toy-resnet · layer3")


def test_errors_exit_2(atlas, tmp_path, capsys) -> None:
    assert main(["concepts", "fit", str(tmp_path / "none"), "--layer", "layer3"]) == 2
    assert "no atlas" in capsys.readouterr().err
    assert main(["concepts", "fit", str(atlas), "--layer", "layer3"]) == 2   # K = 512 > 48
    assert "n_concepts <= 48" in capsys.readouterr().err
    assert main(["bench", "concepts", str(atlas), "--layer", "layer9"]) == 2
    assert "layer9" in capsys.readouterr().err
