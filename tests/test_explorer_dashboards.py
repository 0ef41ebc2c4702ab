"""The concept and CAFE latent dashboards (issue 13 item 3, issue 16), without a browser: the
payload each export embeds, checked against the basis, the atlas, the graph and the grounding
it comes from, the CLIs, and the refusals. tests/test_explorer_dashboards_browser.py opens the
pages in Chromium and uses the fixtures below."""

from __future__ import annotations

import json
import re
import shutil
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from ierf.atlas.store import open_atlas
from ierf.cli import main
from ierf.concepts import BisectingSphericalKMeans
from ierf.concepts.basis import ConceptBasis
from ierf.concepts.extractors import TopKSAE
from ierf.errors import IerfError
from ierf.explorer import export_concepts, export_latents, render_dashboard
from ierf.explorer.dashboard_page import DASH_SCRIPTS, DASHBOARD_VERSION, payload
from ierf.explorer.page import static
from ierf.graph.concept_graph import ConceptGraph, Edges, LayerNodes
from ierf.graph.export import to_dict
from ierf.models import load_model
from ierf.viz.cards import nearest_samples

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: see conftest.py

XSS = "<img src=x onerror=alert(1)>"
SCRIPT_CLOSE = "</script><script>alert(2)</script>"


def page_data(path: Path) -> dict[str, Any]:
    """The payload embedded in a dashboard page."""
    text = path.read_text()
    found = re.search(r'<script id="ierf-data" type="application/json">(.*?)</script>', text,
                      re.DOTALL)
    assert found, "no payload in the page"
    return json.loads(found.group(1))


# -- fixtures: a tiny atlas with two bases, a graph of one, a CAFE grounding ------------------


def kmeans_basis(atlas: Any, layer: str, k: int, seed: int = 0) -> ConceptBasis:
    X = atlas.pfvs(layer)
    km = BisectingSphericalKMeans(k, center=X.mean(0), n_init=1, max_iter=10, alpha=0.01,
                                  lasso_max_iter=200, lasso_tol=1e-2, seed=seed).fit(X)
    return ConceptBasis.bind(km, atlas.model(), layer, atlas=str(atlas.path.resolve()))


def graph_doc(basis: ConceptBasis, nodes: list[int], labels: dict[int, str],
              basis_path: Path) -> dict[str, Any]:
    """A concept graph over ``layer2`` (4 concepts) → the basis' layer (``nodes``) → 2 classes."""
    g = torch.Generator().manual_seed(0)
    layers = ["layer2", basis.layer, "output"]
    sizes = {"layer2": 4, basis.layer: len(nodes)}
    index = {"layer2": torch.arange(4), basis.layer: torch.tensor(nodes)}
    layer_nodes = {l: LayerNodes(l, index[l], [labels.get(int(i), f"{l} #{int(i)}")
                                              if l == basis.layer else f"{l} #{int(i)}"
                                              for i in index[l]],
                                 torch.randn(sizes[l], 2, generator=g),
                                 torch.rand(sizes[l], generator=g),
                                 torch.rand(sizes[l], generator=g), 0.1, torch.randn(2, generator=g))
                   for l in layers[:2]}
    edges = [Edges("layer2", basis.layer, torch.randn(5, len(nodes), generator=g), "ig"),
             Edges(basis.layer, "output", torch.randn(len(nodes) + 1, 2, generator=g), "ig")]
    graph = ConceptGraph(layers, layer_nodes, torch.tensor([3, 5]), ["cat", XSS],
                         torch.randn(2, generator=g), torch.rand(2, generator=g), edges,
                         {"model": basis.model, "fingerprint": basis.fingerprint,
                          "basis_paths": {basis.layer: str(basis_path)}})
    return to_dict(graph, "test-graph")


@pytest.fixture(scope="module")
def atlas_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dash") / "atlas"
    torch.set_num_threads(1)
    assert main(["atlas", "build", "--model", "toy-resnet", "--images", "benchmark", "--n", "4",
                 "--layers", "layer2,layer3", "--samples-per-image", "3", "--out",
                 str(path)]) == 0
    atlas = open_atlas(path)
    kmeans_basis(atlas, "layer3", 6).save(path / "concepts" / "layer3-kmeans")
    kmeans_basis(atlas, "layer2", 5).save(path / "concepts" / "layer2-kmeans")
    basis = ConceptBasis.load(path / "concepts" / "layer3-kmeans")
    doc = graph_doc(basis, [0, 2, 5], {2: XSS, 5: SCRIPT_CLOSE},
                    path / "concepts" / "layer3-kmeans")
    (path / "graph").mkdir()
    (path / "graph" / "graph.json").write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def grounding(tmp_path_factory: pytest.TempPathFactory, toy_vit) -> dict[str, Path]:
    """``ierf cafe ground`` of an untrained TopK SAE on toy-vit's ``blocks.1``, patch and CLS
    tokens (the dashboard only reads what ground writes)."""
    root = tmp_path_factory.mktemp("cafe")
    torch.set_num_threads(1)
    out = {}
    for kind in ("patch", "cls"):
        basis = ConceptBasis.bind(TopKSAE(96, 8, k=2, seed=1), toy_vit, "blocks.1", tokens=kind)
        basis.save(root / f"sae-{kind}")
        out[kind] = root / f"ground-{kind}"
        assert main(["cafe", "ground", str(root / f"sae-{kind}"), "--images", "benchmark",
                     "--n", "4", "--n-latents", "2", "--top", "2", "--method", "gradient",
                     "-o", str(out[kind]), "--no-progress"]) == 0
        out[f"basis-{kind}"] = root / f"sae-{kind}"
    return out


# -- the concept dashboard -------------------------------------------------------------------


def test_concept_payload_is_the_basis_on_its_atlas(atlas_dir, tmp_path) -> None:
    path = atlas_dir / "concepts" / "layer3-kmeans"
    done = export_concepts(path, tmp_path / "c.html", k=4)
    data = page_data(done.path)
    assert data["dashboard"]["kind"] == "concepts"
    assert data["dashboard"]["version"] == DASHBOARD_VERSION
    (s,) = data["sets"]
    basis, atlas = ConceptBasis.load(path), open_atlas(atlas_dir)
    assert (s["layer"], s["n_concepts"], s["importance_kind"]) == ("layer3", 6, "share")
    assert [i["k"] for i in s["items"]] == list(range(6)) and done.items == 6
    X, records = atlas.pfvs("layer3"), atlas.records("layer3")
    U = basis.encode(X).detach()
    for item in s["items"]:
        k = item["k"]
        assert item["frequency"] == pytest.approx((U[:, k] != 0).float().mean().item())
        assert item["activation"] == pytest.approx(U[:, k].mean().item(), abs=1e-6)
        # the nearest PFVs: those of ierf.viz.cards, drawn at their image and grid position
        top = nearest_samples(X, basis.extractor, [k], k=4)[0].tolist()
        shown = [s["samples"][t] for t in item["top"]]
        assert [(x["image"], x["row"], x["col"]) for x in shown] == [
            (atlas.images[records["image"][i]], records["row"][i].item(),
             records["col"][i].item()) for i in top]
        assert item["coef"] == pytest.approx(U[top, k].tolist(), abs=1e-5)
        # class share: coefficient mass on PFVs of images predicted as each class
        pos = U[:, k].clamp_min(0)
        for c, v in item["importance"]:
            assert v == pytest.approx((pos[records["predicted"] == c].sum() / pos.sum()).item(),
                                      abs=1e-5)
        assert sum(v for _, v in item["importance"]) <= 1 + 1e-5
    # every picture the items use is an embedded PNG
    used = {s["samples"][t]["picture"] for i in s["items"] for t in i["top"]}
    assert all(data["images"][u].startswith("data:image/png;base64,") for u in used)


def test_graph_nodes_give_labels_importance_and_edges(atlas_dir, tmp_path) -> None:
    path = atlas_dir / "concepts" / "layer3-kmeans"
    done = export_concepts(path, tmp_path / "c.html", graph=atlas_dir / "graph", k=2)
    (s,) = page_data(done.path)["sets"]
    doc = json.loads((atlas_dir / "graph" / "graph.json").read_text())
    nodes = {n["node_id"]: n for n in doc["nodes"]}
    assert s["importance_kind"] == "graph" and s["classes"] == ["cat", XSS]
    linked = {i["k"]: i for i in s["items"] if i["node"]}
    assert sorted(linked) == [0, 2, 5]
    assert linked[2]["label"] == XSS and linked[5]["label"] == SCRIPT_CLOSE
    assert s["items"][1]["label"] == "concept 1" and s["items"][1]["node"] is None
    for item in linked.values():
        node = nodes[item["node"]]
        assert node["basis_index"] == item["k"]
        expected = sorted(([c, v] for c, v in enumerate(node["importance"]) if v),
                          key=lambda cv: -abs(cv[1]))
        assert [c for c, _ in item["importance"]] == [c for c, _ in expected]
        assert [v for _, v in item["importance"]] == pytest.approx([v for _, v in expected])
        ins = [l for l in doc["links"] if l["target"] == item["node"]]
        outs = [l for l in doc["links"] if l["source"] == item["node"]]
        assert (item["n_in"], item["n_out"]) == (len(ins), len(outs))
        assert [e[2] for e in item["in"]] == sorted((l["weight"] for l in ins), key=abs,
                                                    reverse=True)
        assert {e[0] for e in item["out"]} == {l["target"] for l in outs}
        assert all(e[1] == nodes[e[0]]["clerp"] for e in item["in"] + item["out"])
    # the class filter's index: per class, the concepts with a non-zero importance for it
    want: dict[str, list[list[float]]] = {}
    for item in linked.values():
        for c, v in enumerate(nodes[item["node"]]["importance"]):
            if v:
                want.setdefault(str(c), []).append([item["k"], v])
    assert set(s["by_class"]) == set(want)
    for c, ranked in s["by_class"].items():
        assert [v for _, v in ranked] == sorted((v for _, v in ranked), key=abs, reverse=True)
        assert dict(map(tuple, ranked)) == pytest.approx(dict(map(tuple, want[c])))
    # the page escapes what could end its script element or be read as markup
    text = done.path.read_text()
    assert XSS not in text and SCRIPT_CLOSE not in text and "\\u003cimg src=x" in text


def test_an_atlas_shows_every_basis_and_a_graph_of_another_basis_is_not_linked(
        atlas_dir, tmp_path) -> None:
    done = export_concepts(atlas_dir, tmp_path / "all.html", graph=atlas_dir / "graph", k=2,
                           images="folder")
    data = page_data(done.path)
    assert [s["id"] for s in data["sets"]] == ["layer2-kmeans", "layer3-kmeans"]
    assert done.sets == 2 and done.items == 11
    # the graph records no basis path for layer2: its layer2 nodes link by basis index
    assert [s["graph"] for s in data["sets"]] == ["test-graph", "test-graph"]
    assert sum(i["node"] is not None for i in data["sets"][0]["items"]) == 4
    # pictures written beside the page, referred to relatively; the page embeds none
    assert done.folder == tmp_path / "all_files" and done.folder.is_dir()
    assert all(u.startswith("all_files/") for u in data["images"])
    assert all((tmp_path / u).is_file() for u in data["images"])
    assert "data:image/png" not in done.path.read_text()
    # a graph whose layer3 nodes come from another basis folder is not linked
    other = atlas_dir / "concepts" / "layer3-kmeans"
    copy = tmp_path / "copy"
    ConceptBasis.load(other).save(copy)
    done = export_concepts(copy, tmp_path / "c.html", atlas=atlas_dir,
                           graph=atlas_dir / "graph", k=2)
    assert any("from another basis" in w for w in done.warnings)
    assert page_data(done.path)["sets"][0]["importance_kind"] == "share"


def test_concepts_show_cli(atlas_dir, tmp_path, capsys) -> None:
    out = tmp_path / "page.html"
    assert main(["concepts", "show", str(atlas_dir / "concepts" / "layer2-kmeans"), "-o",
                 str(out), "--k", "3", "--no-progress"]) == 0
    assert "5 concepts of 1 bases" in capsys.readouterr().out
    (s,) = page_data(out)["sets"]
    assert all(len(i["top"]) == 3 for i in s["items"])


def test_bad_concept_sources_are_refused_before_writing(atlas_dir, tmp_path) -> None:
    out = tmp_path / "never.html"
    with pytest.raises(IerfError, match="neither a concept basis .* nor an atlas"):
        export_concepts(tmp_path, out)
    empty = tmp_path / "empty-atlas"
    empty.mkdir()
    (empty / "manifest.sqlite").write_bytes((atlas_dir / "manifest.sqlite").read_bytes())
    with pytest.raises(IerfError, match="has no concept basis under"):
        export_concepts(empty, out)
    newer = tmp_path / "newer"
    ConceptBasis.load(atlas_dir / "concepts" / "layer3-kmeans").save(newer)
    meta = json.loads((newer / "basis.json").read_text())
    (newer / "basis.json").write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(IerfError, match="format version 99"):
        export_concepts(newer, out)
    with pytest.raises(IerfError, match="is a folder"):
        export_concepts(atlas_dir, tmp_path)
    layer1 = tmp_path / "layer1"
    atlas = open_atlas(atlas_dir)
    ConceptBasis(TopKSAE(16, 4, k=2), "toy-resnet", atlas.meta["fingerprint"], "layer1",
                 provenance={"atlas": str(atlas_dir)}).save(layer1)
    with pytest.raises(IerfError, match="layer 'layer1', which atlas .* does not have"):
        export_concepts(layer1, out)
    lost = tmp_path / "lost"
    ConceptBasis(TopKSAE(64, 4, k=2), "toy-resnet", atlas.meta["fingerprint"], "layer3",
                 provenance={"atlas": str(tmp_path / "gone")}).save(lost)
    with pytest.raises(IerfError, match="give one with --atlas"):
        export_concepts(lost, out)
    ConceptBasis(TopKSAE(64, 4, k=2), "toy-resnet", 1.0, "layer3").save(lost)
    with pytest.raises(IerfError, match="other weights"):
        export_concepts(lost, out, atlas=atlas_dir)
    assert not out.exists()


# -- the latent dashboard --------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["patch", "cls"])
def test_latent_payload_is_the_grounding(grounding, tmp_path, kind) -> None:
    folder = grounding[kind]
    done = export_latents(folder, tmp_path / "l.html", basis=grounding[f"basis-{kind}"],
                          images="benchmark", n=4, steps=4)
    data = page_data(done.path)
    assert data["dashboard"]["kind"] == "latents" and not data["dashboard"]["warnings"]
    (s,) = data["sets"]
    maps = load_file(folder / "maps.safetensors")
    rows = (folder / "pairs.csv").read_text().splitlines()[1:]
    assert s["grid"] == [8, 8] and s["images_shown"] and s["tokens"] == kind
    assert sum(len(i["pairs"]) for i in s["items"]) == len(rows) == len(maps["ierfs"])
    assert sorted(i["k"] for i in s["items"]) == sorted(set(maps["latent"].tolist()))
    for item in s["items"]:
        assert item["cls"] == (kind == "cls")
        assert item["label"].startswith("CLS latent" if kind == "cls" else "latent")
        assert item["panel"] is not None                      # the PNG panel of ground
        for p in item["pairs"]:
            # insertion curves end at the image itself: z(c_N) / z(I) = 1 (Sec. V-C1)
            for r, c in p["curves"].items():
                if r == "activation" and kind == "cls":
                    assert all(v is None for v in c)          # no firing patch, no ranking
                    continue
                assert len(c) == 5 and c[-1] == pytest.approx(1, abs=1e-4)
                assert p["auc"][r] == pytest.approx(sum((a + b) / 8 for a, b in
                                                        pairwise(c)), abs=1e-5)
            assert p["act"] != p["ierf"]
            assert (p["stats"]["outside"] is None) == (kind == "cls")
    assert done.items == len(s["items"])


def older(grounding: Path, tmp_path: Path) -> Path:
    """A copy of ``grounding`` as ierf wrote it before ``grounding.json``."""
    return Path(shutil.copytree(grounding, tmp_path / "older",
                                ignore=shutil.ignore_patterns("grounding.json")))


def test_latents_without_the_images_draw_on_grey(grounding, tmp_path, capsys) -> None:
    out = tmp_path / "bare.html"
    assert main(["cafe", "report", str(older(grounding["patch"], tmp_path)), "-o",
                 str(out)]) == 0
    assert "2 latents" in capsys.readouterr().out
    data = page_data(out)
    assert "give --basis and --images" in data["dashboard"]["warnings"][0]
    (s,) = data["sets"]
    assert s["insertion"] is None and not s["images_shown"] and s["grid"] == [8, 8]
    assert all("curves" not in p for i in s["items"] for p in i["pairs"])


def test_report_reloads_what_ground_recorded(grounding, tmp_path, capsys) -> None:
    """Without flags, the page is the one made with the flags given to `ierf cafe ground`."""
    folder = grounding["patch"]
    bare, given = tmp_path / "bare.html", tmp_path / "given.html"
    assert main(["cafe", "report", str(folder), "-o", str(bare), "--steps", "2"]) == 0
    assert main(["cafe", "report", str(folder), "-o", str(given), "--steps", "2", "--basis",
                 str(grounding["basis-patch"]), "--images", "benchmark", "--n", "4"]) == 0
    assert "note:" not in capsys.readouterr().err
    data = page_data(bare)
    assert data == page_data(given)
    (s,) = data["sets"]
    assert s["images_shown"] and s["insertion"] == {"rankings": ["ierf", "activation",
                                                                 "random"], "steps": 2}
    assert all(len(p["curves"]["ierf"]) == 3 for i in s["items"] for p in i["pairs"])


def test_a_moved_or_refitted_basis_is_refused(grounding, tmp_path) -> None:
    basis, moved, out = tmp_path / "sae", tmp_path / "sae-moved", tmp_path / "never.html"
    shutil.copytree(grounding["basis-patch"], basis)
    assert main(["cafe", "ground", str(basis), "--images", "benchmark", "--n", "4",
                 "--latents", str(int(load_file(grounding["patch"] / "maps.safetensors")
                                      ["latent"][0])), "--top", "2", "--method", "gradient",
                 "-o", str(tmp_path / "ground"), "--no-progress"]) == 0
    basis.rename(moved)
    with pytest.raises(IerfError, match=r"^the basis .*sae that .*ground was grounded with "
                       r"is no longer at .*sae: pass --basis with its new folder$"):
        export_latents(tmp_path / "ground", out)
    done = export_latents(tmp_path / "ground", tmp_path / "l.html", basis=moved, steps=0)
    assert page_data(done.path)["sets"][0]["images_shown"]
    torch.manual_seed(1)       # same model and layer, other weights: another fingerprint
    ConceptBasis.bind(TopKSAE(96, 8, k=2, seed=1), load_model("toy-vit", weights=None),
                      "blocks.1").save(basis)
    with pytest.raises(IerfError, match=r"sae is a basis of other toy-vit weights than .* "
                       r"\(fingerprint .*\): pass --basis with the basis of `ierf cafe ground`"):
        export_latents(tmp_path / "ground", out)
    assert not out.exists()


def test_bad_groundings_are_refused(grounding, tmp_path) -> None:
    out = tmp_path / "never.html"
    with pytest.raises(IerfError, match="not a CAFE grounding"):
        export_latents(tmp_path, out)
    with pytest.raises(IerfError, match="give both --basis and --images .*no grounding.json"):
        export_latents(older(grounding["patch"], tmp_path), out,
                       basis=grounding["basis-patch"])
    newer = shutil.copytree(grounding["patch"], tmp_path / "newer")
    rec = json.loads((newer / "grounding.json").read_text())
    (newer / "grounding.json").write_text(json.dumps({**rec, "format_version": 99}))
    with pytest.raises(IerfError, match="format version 99, this ierf reads 1"):
        export_latents(newer, out)
    (newer / "grounding.json").write_text(json.dumps({**rec, "basis": "elsewhere"}))
    with pytest.raises(IerfError, match="lacks basis.resolved; run `ierf cafe ground` again"):
        export_latents(newer, out)
    with pytest.raises(IerfError, match="give the --images and --n of `ierf cafe ground`"):
        export_latents(grounding["patch"], out, basis=grounding["basis-patch"],
                       images="benchmark", n=2, steps=0)
    with pytest.raises(IerfError, match="grounds patch latents, .* a basis of cls tokens"):
        export_latents(grounding["patch"], out, basis=grounding["basis-cls"],
                       images="benchmark", n=4)
    broken = tmp_path / "broken"
    broken.mkdir()
    for name in ("latents.csv", "maps.safetensors"):
        (broken / name).write_bytes((grounding["patch"] / name).read_bytes())
    lines = (grounding["patch"] / "pairs.csv").read_text().splitlines()
    (broken / "pairs.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(IerfError, match="pairs.csv has .* rows but maps.safetensors holds"):
        export_latents(broken, out)
    assert not out.exists()


# -- the page ----------------------------------------------------------------------------------


def test_page_holds_the_scripts_and_escapes_the_data() -> None:
    data = payload("concepts", [{"id": SCRIPT_CLOSE, "items": []}], [], XSS)
    page = render_dashboard(data, XSS)
    for name in DASH_SCRIPTS:
        assert static(name).strip()[:40] in page
    assert "<title>&lt;img src=x onerror=alert(1)&gt;</title>" in page
    assert SCRIPT_CLOSE not in page and page.count("</script>") == 2
    assert "Content-Security-Policy" in page and "connect-src" not in page
    with pytest.raises(IerfError, match="dashboard kind"):
        payload("graphs", [], [], "x")
