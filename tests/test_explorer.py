"""The offline HTML explorer (issue 13), without a browser: reading and checking the graph
JSON, thumbnails, the assembled page and `ierf graph show`. The page itself is tested in
Chromium by tests/test_explorer_browser.py, which uses the helpers below."""

from __future__ import annotations

import argparse
import base64
import json
import random
import re
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from ierf.errors import IerfError
from ierf.explorer import SUPPORTED_FORMAT, SUPPORTED_VERSIONS, export_html, render_page
from ierf.explorer.page import SCRIPTS, static
from ierf.graph import trace_routes
from ierf.graph.concept_graph import ConceptGraph, Edges, LayerNodes
from ierf.graph.export import FORMAT, FORMAT_VERSION, to_dict

XSS = "<img src=x onerror=alert(1)>"
SCRIPT_CLOSE = "</script><script>alert(2)</script>"

# -- graphs to show ------------------------------------------------------------------------


def concept_graph(sizes: list[int], n_classes: int = 3, seed: int = 0) -> ConceptGraph:
    """A random ConceptGraph (ICAT-like weights) over ``len(sizes)`` concept layers."""
    g = torch.Generator().manual_seed(seed)
    layers = [f"layer{i + 1}" for i in range(len(sizes))] + ["output"]
    nodes = {l: LayerNodes(l, torch.arange(K), [f"{l} concept {k}" for k in range(K)],
                           torch.randn(K, n_classes, generator=g), torch.rand(K, generator=g),
                           torch.rand(K, generator=g), 0.2, torch.randn(n_classes, generator=g))
             for l, K in zip(layers, sizes)}
    edges = []
    for i, K in enumerate(sizes):
        T = sizes[i + 1] if i + 1 < len(sizes) else n_classes
        w = torch.randn(K + 1, T, generator=g) ** 3             # heavy-tailed, like ICAT
        w[torch.rand(K + 1, T, generator=g) < 0.2] = 0         # some absent edges
        edges.append(Edges(layers[i], layers[i + 1], w, "ig"))
    names = ["red circle", "blue square", "green triangle", "cat", "dog"][:n_classes]
    return ConceptGraph(layers, nodes, torch.arange(n_classes), names,
                        torch.randn(n_classes, generator=g),
                        torch.softmax(torch.randn(n_classes, generator=g), 0), edges,
                        {"model": "toy-resnet", "method": "ig", "image_ids": ["image0"]})


def write_png(path: Path, seed: int) -> Path:
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), tuple(rng.randrange(256) for _ in range(3))).save(path)
    return path


def write_graph(folder: Path, sizes: list[int] | None = None, *, thumbnails: str = "most",
                labels: dict[str, str] | None = None, routes: bool = True,
                seed: int = 0) -> Path:
    """``folder/graph.json`` from :func:`ierf.graph.export.to_dict` (the real exporter),
    with PNG thumbnails (``"most"``: all nodes but the error nodes and one concept;
    ``"none"``) and ``routes.json`` from :func:`trace_routes`. Returns the graph file."""
    graph = concept_graph(sizes or [10, 8], seed=seed)
    doc = to_dict(graph, "test-graph")
    for node in doc["nodes"]:
        node["clerp"] = (labels or {}).get(node["node_id"], node["clerp"])
        if node["kind"] == "class":                      # class names are labels too
            names = doc["metadata"]["ierf"]["class_names"]
            names[doc["metadata"]["ierf"]["classes"].index(node["feature"])] = node["clerp"]
        if thumbnails == "most" and node["kind"] != "error" and node["node_id"] != "layer1:1":
            name = f"thumbnails/{node['node_id'].replace(':', '-')}.png"
            write_png(folder / name, hash(node["node_id"]) % 1000)
            node["thumbnails"] = [name]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "graph.json").write_text(json.dumps(doc))
    if routes:
        found = trace_routes(graph, 0, k=3)
        (folder / "routes.json").write_text(json.dumps([r.to_dict() for r in found]))
    return folder / "graph.json"


def synthetic_doc(sizes: list[int], n_classes: int, n_links: int, seed: int = 0
                  ) -> dict[str, Any]:
    """A graph document of the explorer's format without torch, of any size: concept
    layers of ``sizes`` nodes (plus an error node each), ``n_classes`` classes, about
    ``n_links`` edges between consecutive columns, in proportion to their sizes."""
    rng = random.Random(seed)
    layers = [f"block{i + 1}" for i in range(len(sizes))] + ["output"]
    nodes: list[dict[str, Any]] = []
    columns: list[list[str]] = []
    for pos, (layer, K) in enumerate(zip(layers, sizes)):
        ids = []
        for k in range(K):
            imp = [rng.gauss(0, 1) for _ in range(n_classes)]
            nodes.append(_node(f"{layer}:{k}", pos, layer, "concept", k, f"{layer} concept {k}",
                               sum(map(abs, imp)), rng.random(), importance=imp,
                               basis_index=k, frequency=rng.random()))
            ids.append(f"{layer}:{k}")
        imp = [rng.gauss(0, 0.3) for _ in range(n_classes)]
        nodes.append(_node(f"{layer}:error", pos, layer, "error", -1, f"{layer} residual",
                           sum(map(abs, imp)), 0.2, importance=imp, error_share=0.2))
        columns.append(ids + [f"{layer}:error"])
    classes = []
    for c in range(n_classes):
        nodes.append(_node(f"output:{c}", len(sizes), "output", "class", c, f"class {c}",
                           1 / n_classes, rng.gauss(0, 1), token_prob=1 / n_classes,
                           is_target_logit=True))
        classes.append(f"output:{c}")
    columns.append(classes)
    pairs = [(columns[i], columns[i + 1] if i + 2 < len(columns) else classes)
             for i in range(len(sizes))]
    pairs = [(a, [t for t in b if not t.endswith(":error")]) for a, b in pairs]
    total = sum(len(a) * len(b) for a, b in pairs)
    links = []
    for i, (a, b) in enumerate(pairs):
        n = round(n_links * len(a) * len(b) / total)
        n = min(len(a) * len(b), n if i + 1 < len(pairs) else n_links - len(links))
        for flat in rng.sample(range(len(a) * len(b)), n):
            links.append({"source": a[flat // len(b)], "target": b[flat % len(b)],
                          "weight": rng.gauss(0, 1) ** 3})
    ierf = {"format": FORMAT, "format_version": FORMAT_VERSION, "layers": layers,
            "method": "ig", "classes": list(range(n_classes)),
            "class_names": [f"class {c}" for c in range(n_classes)],
            "edges": [{"source": a, "target": b, "method": "ig", "gap": None}
                      for a, b in pairwise(layers)], "metadata": {}}
    meta = {"slug": "synthetic", "scan": "synthetic", "prompt": "", "prompt_tokens": [],
            "schema_id": None, "node_threshold": None, "info": {}, "ierf": ierf}
    q = {"pinnedIds": [], "supernodes": [], "linkType": "both", "clickedId": "", "sg_pos": ""}
    return {"metadata": meta, "qParams": q, "nodes": nodes, "links": links}


def _node(node_id: str, pos: int, layer: str, kind: str, feature: int, clerp: str,
          influence: float, activation: float, **ours: Any) -> dict[str, Any]:
    types = {"concept": "cross layer transcoder", "error": "mlp reconstruction error",
             "class": "logit"}
    node = {"node_id": node_id, "jsNodeId": node_id, "feature": feature, "layer": str(pos),
            "ctx_idx": 0, "reverse_ctx_idx": 0, "run_idx": 0, "feature_type": types[kind],
            "token_prob": 0.0, "is_target_logit": False, "clerp": clerp,
            "influence": influence, "activation": activation, "kind": kind,
            "layer_name": layer}
    node.update(ours)
    return node


def reference_view(doc: dict[str, Any], threshold: float = 0.05, top_k: int = 5,
                   per_layer: int = 24, forced: Iterable[str] = ()
                   ) -> tuple[set[str], list[tuple[str, str]]]:
    """What the page draws, computed independently: per column the error and class nodes
    and the ``per_layer`` most influential concepts (plus ``forced``); among them the edges
    with ``|w| >= threshold · max |w|`` of their column pair, the ``top_k`` strongest per
    target (0: all)."""
    cols: dict[int, list[dict[str, Any]]] = {}
    for n in doc["nodes"]:
        cols.setdefault(int(n["layer"]), []).append(n)
    kept = set(forced)
    for col in cols.values():
        concepts = sorted((n for n in col if n["kind"] == "concept"),
                          key=lambda n: -n["influence"])
        kept |= {n["node_id"] for n in concepts[:per_layer or None]}
        kept |= {n["node_id"] for n in col if n["kind"] != "concept"}
    col_of = {n["node_id"]: int(n["layer"]) for n in doc["nodes"]}
    biggest: dict[tuple[int, int], float] = {}
    for link in doc["links"]:
        key = col_of[link["source"]], col_of[link["target"]]
        biggest[key] = max(biggest.get(key, 0.0), abs(link["weight"]))
    incoming: dict[str, list[dict[str, Any]]] = {}
    for link in doc["links"]:
        incoming.setdefault(link["target"], []).append(link)
    links = []
    for target in kept:
        ranked = sorted(incoming.get(target, []), key=lambda l: -abs(l["weight"]))
        taken = [l for l in ranked if l["source"] in kept and abs(l["weight"]) / biggest[
            col_of[l["source"]], col_of[target]] >= threshold]
        links += [(l["source"], target) for l in taken[:top_k or None]]
    return kept, links


def page_data(page: str) -> str:
    """The JSON text embedded in an exported page."""
    found = re.search(r'<script id="ierf-data" type="application/json">(.*?)</script>', page,
                      re.DOTALL)
    assert found, "the page has no data element"
    return found.group(1)


# -- reading and checking ------------------------------------------------------------------


def test_formats_agree_with_the_graph_exporter() -> None:
    assert SUPPORTED_FORMAT == FORMAT and FORMAT_VERSION in SUPPORTED_VERSIONS


def test_export_writes_one_self_contained_page(tmp_path: Path) -> None:
    graph = write_graph(tmp_path / "g")
    done = export_html(tmp_path / "g", tmp_path / "out" / "graph.html")
    page = done.path.read_text()
    doc = json.loads(graph.read_text())
    assert (done.nodes, done.links) == (len(doc["nodes"]), len(doc["links"]))
    assert done.routes == 3 and done.folder is None
    assert done.thumbnails == sum(1 for n in doc["nodes"] if n.get("thumbnails"))
    assert page.count("data:image/png;base64,") == done.thumbnails
    # no file or host outside the page is referred to: only inline scripts and styles
    assert not re.search(r"<(script|link|img|iframe)[^>]*(src|href)=", page, re.IGNORECASE)
    assert "http://" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in page
    assert "Content-Security-Policy" in page and "default-src 'none'" in page
    for name in SCRIPTS:                    # every source file is in, in its own section
        assert f"// ---- {name} ----" in page
    assert not list((tmp_path / "out").glob(".*"))          # no temporary file left


def test_data_from_the_graph_cannot_become_markup(tmp_path: Path) -> None:
    write_graph(tmp_path / "g", labels={"layer1:0": XSS, "layer2:0": SCRIPT_CLOSE},
                thumbnails="none")
    page = export_html(tmp_path / "g", tmp_path / "p.html", title=XSS).path.read_text()
    assert XSS not in page and "</script><script>alert" not in page
    assert "&lt;img src=x onerror=alert(1)&gt;" in page        # the escaped <title>
    labels = {n["node_id"]: n["clerp"] for n in json.loads(page_data(page))["graph"]["nodes"]}
    assert labels["layer1:0"] == XSS and labels["layer2:0"] == SCRIPT_CLOSE


def test_static_sources_are_package_data_and_close_no_element() -> None:
    for name in (*SCRIPTS, "graph.css", "svg.css", "page.html"):
        assert static(name).strip()
    for name in SCRIPTS:
        assert "</" not in static(name).replace("<\\/", ""), name
        assert "innerHTML" not in static(name) and "insertAdjacentHTML" not in static(name)


@pytest.mark.parametrize("version, words", [(FORMAT_VERSION + 1, "newer than this explorer"),
                                            (0, "rebuild the graph"),
                                            (None, "rebuild the graph")])
def test_other_format_versions_are_refused_with_what_to_do(tmp_path: Path, version: Any,
                                                           words: str) -> None:
    graph = write_graph(tmp_path / "g", routes=False, thumbnails="none")
    doc = json.loads(graph.read_text())
    doc["metadata"]["ierf"]["format_version"] = version
    graph.write_text(json.dumps(doc))
    with pytest.raises(IerfError, match=words):
        export_html(graph, tmp_path / "p.html")
    assert not (tmp_path / "p.html").exists()


@pytest.mark.parametrize("change, words", [
    (lambda d: d["metadata"].pop("ierf"), "not an ierf concept graph"),
    (lambda d: d.pop("links"), "not an attribution graph"),
    (lambda d: d["links"].append({"source": "nope", "target": "output:0", "weight": 1.0}),
     "names a node that does not exist"),
    (lambda d: d["nodes"].append(dict(d["nodes"][0])), "used twice"),
    (lambda d: d["nodes"][0].update(kind="mystery"), "has kind 'mystery'"),
    (lambda d: d["links"][0].update(weight="heavy"), "not a number"),
])
def test_malformed_graphs_are_refused_in_one_line(tmp_path: Path, change: Any,
                                                   words: str) -> None:
    graph = write_graph(tmp_path / "g", routes=False, thumbnails="none")
    doc = json.loads(graph.read_text())
    change(doc)
    graph.write_text(json.dumps(doc))
    with pytest.raises(IerfError, match=words) as e:
        export_html(graph, tmp_path / "p.html")
    assert "\n" not in str(e.value)


def test_missing_files_and_bad_json_are_clear(tmp_path: Path) -> None:
    with pytest.raises(IerfError, match="no concept graph at"):
        export_html(tmp_path / "nowhere", tmp_path / "p.html")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(IerfError, match="not valid JSON"):
        export_html(tmp_path / "bad.json", tmp_path / "p.html")
    write_graph(tmp_path / "g", routes=False, thumbnails="none")
    with pytest.raises(IerfError, match="no routes file"):
        export_html(tmp_path / "g", tmp_path / "p.html", routes=tmp_path / "r.json")
    (tmp_path / "r.json").write_text(json.dumps([{"nodes": ["layer1:0", "elsewhere:3"]}]))
    with pytest.raises(IerfError, match="routes of another graph"):
        export_html(tmp_path / "g", tmp_path / "p.html", routes=tmp_path / "r.json")
    with pytest.raises(IerfError, match="is a folder"):
        export_html(tmp_path / "g", tmp_path)


def test_non_finite_numbers_are_written_as_null(tmp_path: Path) -> None:
    graph = write_graph(tmp_path / "g", routes=False, thumbnails="none")
    text = graph.read_text().replace('"activation": ', '"activation": NaN, "was": ', 1)
    graph.write_text(text)
    data = page_data(export_html(graph, tmp_path / "p.html").path.read_text())
    assert "NaN" not in data and '"activation":null' in data


def test_thumbnails_missing_or_remote_become_placeholders_with_a_note(tmp_path: Path) -> None:
    graph = write_graph(tmp_path / "g", routes=False)
    doc = json.loads(graph.read_text())
    doc["nodes"][0]["thumbnails"] = ["thumbnails/gone.png"]
    doc["nodes"][2]["thumbnails"] = ["https://example.org/a.png"]
    graph.write_text(json.dumps(doc))
    done = export_html(graph, tmp_path / "p.html")
    assert any("2 thumbnail(s) left out" in w and "no such file" in w and "a URL" in w
               for w in done.warnings)
    images = json.loads(page_data(done.path.read_text()))["images"]
    assert "example.org" not in json.dumps(images) and doc["nodes"][0]["node_id"] not in images


def test_images_can_go_into_a_folder_beside_the_page(tmp_path: Path) -> None:
    write_graph(tmp_path / "g", routes=False)
    done = export_html(tmp_path / "g", tmp_path / "site" / "view.html", images="folder")
    assert done.folder == tmp_path / "site" / "view_files"
    copied = sorted(done.folder.iterdir())
    assert len(copied) == done.thumbnails > 0
    page = done.path.read_text()
    assert "base64" not in page and f'"view_files/{copied[0].name}"' in page


def test_empty_graph_and_graph_without_edges_still_export(tmp_path: Path) -> None:
    graph = write_graph(tmp_path / "g", routes=False, thumbnails="none")
    doc = json.loads(graph.read_text())
    doc["links"] = []
    graph.write_text(json.dumps(doc))
    assert "no edges" in " ".join(export_html(graph, tmp_path / "a.html").warnings)
    doc["nodes"] = []
    graph.write_text(json.dumps(doc))
    assert "no nodes" in " ".join(export_html(graph, tmp_path / "b.html").warnings)


def test_render_page_puts_each_part_in_once() -> None:
    doc = synthetic_doc([3], 2, 5)
    doc["metadata"]["slug"] = "{{SCRIPT}}"           # placeholders in data stay data
    page = render_page({"graph": doc, "images": {}, "routes": None, "explorer": {}},
                       "{{DATA}}")
    assert page.count("// ---- app.js ----") == 1 and "{{" not in page.replace(
        "{{SCRIPT}}", "").replace("{{DATA}}", "")


# -- the command line ----------------------------------------------------------------------


def show_parser() -> argparse.ArgumentParser:
    from ierf.cli.graph_show import add_show_parser

    parser = argparse.ArgumentParser(prog="ierf graph")
    add_show_parser(parser.add_subparsers(required=True))
    return parser


def test_cli_show_writes_the_page(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_graph(tmp_path / "g")
    args = show_parser().parse_args(["show", str(tmp_path / "g"), "-o",
                                     str(tmp_path / "graph.html")])
    assert args.run(args) == 0
    out = capsys.readouterr()
    assert (tmp_path / "graph.html").is_file()
    assert "23 nodes" in out.out and "3 routes" in out.out and "left out" not in out.err
    args = show_parser().parse_args(["show", str(tmp_path / "g" / "graph.json"),
                                     "--no-routes", "--images", "folder"])
    assert args.run(args) == 0
    assert (tmp_path / "g" / "graph.html").is_file() and (tmp_path / "g" / "graph_files").is_dir()
    assert "routes" not in capsys.readouterr().out


def test_cli_refuses_what_it_cannot_show(tmp_path: Path) -> None:
    args = show_parser().parse_args(["show", str(tmp_path / "nowhere")])
    with pytest.raises(IerfError, match="no concept graph"):
        args.run(args)
    write_graph(tmp_path / "g", routes=False, thumbnails="none")
    args = show_parser().parse_args(["show", str(tmp_path / "g"), "--no-routes", "--routes",
                                     str(tmp_path / "r.json")])
    with pytest.raises(IerfError, match="not both"):
        args.run(args)


def test_real_exporter_output_and_png_is_a_real_image(tmp_path: Path) -> None:
    graph = write_graph(tmp_path / "g")
    done = export_html(graph, tmp_path / "p.html")
    first = re.search(r"data:image/png;base64,([A-Za-z0-9+/=]+)", done.path.read_text())
    assert base64.b64decode(first.group(1)).startswith(b"\x89PNG\r\n\x1a\n")


# -- supernodes: the split trees ----------------------------------------------------------


def fitted_tree(K: int, seed: int = 0) -> Any:
    """A real bisecting k-means extractor with ``K`` concepts (its split tree), on random
    PFVs."""
    from ierf.concepts.extractors.kmeans import BisectingSphericalKMeans

    X = torch.randn(12 * K, 6, generator=torch.Generator().manual_seed(seed))
    return BisectingSphericalKMeans(K).fit(X)


def with_tree(graph: Path, layer: str, tree: Any) -> Path:
    """``graph`` with ``tree`` (a ClusterTree) as ``metadata.ierf.hierarchy[layer]``."""
    doc = json.loads(graph.read_text())
    doc["metadata"]["ierf"].setdefault("hierarchy", {})[layer] = {
        "parents": tree.parents.tolist(), "sizes": tree.sizes.tolist()}
    graph.write_text(json.dumps(doc))
    return graph


def test_split_trees_come_from_the_bases_the_graph_records(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from ierf.explorer.document import load_hierarchy

    km = fitted_tree(10)
    (tmp_path / "basis1").mkdir()
    save_file(km.state_tensors(), tmp_path / "basis1" / "tensors.safetensors")
    doc = json.loads(write_graph(tmp_path / "g", [10, 8]).read_text())
    doc["metadata"]["ierf"]["metadata"]["basis_paths"] = {
        "layer1": str(tmp_path / "basis1"), "layer2": str(tmp_path / "gone")}
    trees, notes = load_hierarchy(doc)
    assert trees == {"layer1": {"parents": km.tree.parents.tolist(),
                                "sizes": km.tree.sizes.tolist()}}
    assert len(notes) == 1 and "layer2" in notes[0] and "gone" in notes[0]
    graph = tmp_path / "g" / "graph.json"
    graph.write_text(json.dumps(doc))
    done = export_html(graph, tmp_path / "p.html")
    assert done.supernodes == ["layer1"] and any("layer2" in w for w in done.warnings)
    assert json.loads(page_data(done.path.read_text()))["hierarchy"] == trees


def test_a_malformed_split_tree_is_refused(tmp_path: Path) -> None:
    from ierf.explorer.document import check_tree

    good = fitted_tree(5).tree
    assert check_tree({"parents": good.parents.tolist(), "sizes": good.sizes.tolist()}, "l")
    for parents in ([-1, 0, 1], [5, 5, 6, 6, 7, 8, 7, -1, 8], [-1, -1, 2]):
        with pytest.raises(IerfError, match="not a bisecting k-means tree"):
            check_tree({"parents": parents, "sizes": [1] * len(parents)}, "l")
    graph = with_tree(write_graph(tmp_path / "g"), "layer1", good)
    doc = json.loads(graph.read_text())
    doc["metadata"]["ierf"]["hierarchy"]["layer1"]["parents"] = [0, 0, 0]
    graph.write_text(json.dumps(doc))
    with pytest.raises(IerfError, match="layer1"):
        export_html(graph, tmp_path / "p.html")


# -- diff mode -----------------------------------------------------------------------------


def test_diff_of_two_graphs_is_the_diagnose_diff_graph(tmp_path: Path) -> None:
    """Over graphs with the same nodes, `diff_documents` gives what `ierf diagnose` writes:
    to_dict(diff_graph(clean, attacked)), up to float32 rounding and our added fields."""
    from ierf.diagnose.compare import diff_graph
    from ierf.explorer.document import diff_documents

    clean, attacked = concept_graph([7, 5], seed=3), concept_graph([7, 5], seed=4)
    ours = diff_documents(to_dict(clean, "x"), to_dict(attacked, "x"), tmp_path, tmp_path,
                          ("clean", "attacked"))
    theirs = to_dict(diff_graph(clean, attacked), "x")
    assert ours["metadata"]["ierf"]["metadata"]["diff"] == "attacked - clean" == \
        theirs["metadata"]["ierf"]["metadata"]["diff"]
    assert [n["node_id"] for n in ours["nodes"]] == [n["node_id"] for n in theirs["nodes"]]
    for a, b in zip(ours["nodes"], theirs["nodes"]):
        assert "diff_only" not in a and set(b) <= set(a)
        for key in ("importance", "activation", "frequency", "influence", "error_share",
                    "token_prob"):
            if key in b:
                assert torch.allclose(torch.tensor(a[key]), torch.tensor(b[key]), atol=1e-5)
    w_ours = {(l["source"], l["target"]): l["weight"] for l in ours["links"]}
    w_theirs = {(l["source"], l["target"]): l["weight"] for l in theirs["links"]}
    assert w_ours.keys() == w_theirs.keys()
    assert all(abs(w_ours[k] - w_theirs[k]) <= 1e-5 * (1 + abs(w_theirs[k])) for k in w_ours)
    a_links = {(l["source"], l["target"]): l["weight"] for l in to_dict(clean, "x")["links"]}
    assert all(l["weight_a"] == a_links.get((l["source"], l["target"])) for l in ours["links"])


def test_diff_marks_nodes_and_edges_of_one_graph_only(tmp_path: Path) -> None:
    from ierf.explorer.document import diff_documents

    a = json.loads(write_graph(tmp_path / "a", [6, 5], seed=1).read_text())
    b = json.loads(write_graph(tmp_path / "b", [6, 5], seed=2).read_text())
    b["nodes"] = [n for n in b["nodes"] if n["node_id"] != "layer1:2"]
    b["links"] = [l for l in b["links"] if "layer1:2" not in (l["source"], l["target"])]
    a["nodes"] = [n for n in a["nodes"] if n["node_id"] != "layer2:4"]
    a["links"] = [l for l in a["links"] if "layer2:4" not in (l["source"], l["target"])]
    d = diff_documents(a, b, tmp_path / "a", tmp_path / "b")
    only = {n["node_id"]: n.get("diff_only") for n in d["nodes"] if n.get("diff_only")}
    assert only == {"layer1:2": "a", "layer2:4": "b"}
    gone = next(n for n in d["nodes"] if n["node_id"] == "layer1:2")
    before = next(n for n in a["nodes"] if n["node_id"] == "layer1:2")
    assert gone["importance"] == [-v for v in before["importance"]]
    assert gone["diff_sides"]["b"] is None
    for l in d["links"]:
        if l["source"] == "layer1:2":
            assert l["weight_b"] is None and l["weight"] == -l["weight_a"]
    assert all(Path(t).is_absolute() and Path(t).is_file()
               for n in d["nodes"] for t in n.get("thumbnails", []))
    b["metadata"]["ierf"]["layers"] = ["layer1", "output"]
    with pytest.raises(IerfError, match="different layers"):
        diff_documents(a, b, tmp_path, tmp_path)


def test_cli_show_diff_writes_a_diff_page(tmp_path: Path, capsys: pytest.CaptureFixture
                                          ) -> None:
    write_graph(tmp_path / "clean", [6, 5], seed=1)
    write_graph(tmp_path / "attacked", [6, 5], seed=2)
    args = show_parser().parse_args(["show", str(tmp_path / "clean"), "--diff",
                                     str(tmp_path / "attacked"), "--names", "clean,attacked"])
    assert args.run(args) == 0
    assert "difference attacked - clean" in capsys.readouterr().out
    page = (tmp_path / "clean" / "diff.html").read_text()
    data = json.loads(page_data(page))
    assert data["graph"]["metadata"]["ierf"]["metadata"]["diff"] == "attacked - clean"
    assert data["routes"] is None                            # no routes unless given
    args = show_parser().parse_args(["show", str(tmp_path / "clean"), "--names", "a,b"])
    with pytest.raises(IerfError, match="--diff"):
        args.run(args)


# -- edge faithfulness (ierf bench graph → the node panel) --------------------------------


def auc_entry(deletion: float, insertion: float, pairs: int = 3) -> dict[str, Any]:
    """One target concept's entry of ``targets.json``: ig and random AUCs."""
    return {"pairs": pairs, "deletion": {"ig": deletion, "random": 0.5},
            "insertion": {"ig": insertion, "random": 0.4}}


def write_faithfulness(folder: Path, nodes: dict[str, dict[str, Any]], **settings: Any
                       ) -> Path:
    """``folder/<source>-<target>/targets.json`` for :func:`concept_graph`'s model, written
    by `ierf bench graph`'s own writer."""
    from ierf.cli.bench_graph import write_targets

    base = {"model": "toy-resnet", "fingerprint": None, "source": "layer1",
            "target": "layer2", "methods": ["ig", "random"], "n_images": 4,
            "targets_per_image": 5, "min_alignment": 0.5, "curve_steps": 20,
            "basis_paths": {}, **settings}
    return write_targets(folder / f"{base['source']}-{base['target']}" / "targets.json",
                         nodes, base)


def test_edge_faithfulness_reaches_the_page(tmp_path: Path, capsys: pytest.CaptureFixture
                                            ) -> None:
    write_graph(tmp_path / "g", routes=False)
    bench = tmp_path / "bench"
    write_faithfulness(bench, {"layer2:3": auc_entry(0.2, 0.7), "layer2:99": auc_entry(0, 1)})
    write_faithfulness(bench, {"layer2:1": auc_entry(0.3, 0.6)}, source="layer0")
    done = export_html(tmp_path / "g", tmp_path / "g.html", faithfulness=bench)
    data = json.loads(page_data((tmp_path / "g.html").read_text()))["faithfulness"]
    assert data["method"] == "ig" and done.faithful == 1
    assert data["nodes"] == {"layer2:3": {**auc_entry(0.2, 0.7), "source": "layer1"}}
    assert [p["source"] for p in data["pairs"]] == ["layer1"]
    assert any("layer0 → layer2 is not an edge set" in w for w in done.warnings)
    args = show_parser().parse_args(["show", str(tmp_path / "g"), "-o", str(tmp_path / "h.html"),
                                     "--faithfulness", str(bench / "layer1-layer2" /
                                                           "targets.json")])
    assert args.run(args) == 0
    assert "1 with edge faithfulness" in capsys.readouterr().out


def test_edge_faithfulness_follows_the_basis_not_its_folder(tmp_path: Path) -> None:
    """Where the graph and ``targets.json`` both record the dictionary's digest, a copied
    basis folder is the same basis and a refitted one in the same folder is not."""
    graph = write_graph(tmp_path / "g", routes=False)
    doc = json.loads(graph.read_text())
    meta = doc["metadata"]["ierf"]["metadata"]
    meta["basis_paths"] = {"layer2": str(tmp_path / "mine")}
    meta["bases"] = {"layer2": {"path": str(tmp_path / "mine"), "digest": "0123abcd"}}
    graph.write_text(json.dumps(doc))
    write_faithfulness(tmp_path / "copied", {"layer2:3": auc_entry(0.2, 0.7)},
                       basis_paths={"layer2": str(tmp_path / "copy")},
                       basis_digests={"layer2": "0123abcd"})
    assert export_html(graph, tmp_path / "g.html", faithfulness=tmp_path / "copied").faithful == 1
    write_faithfulness(tmp_path / "refit", {"layer2:3": auc_entry(0.2, 0.7)},
                       basis_paths={"layer2": str(tmp_path / "mine")},
                       basis_digests={"layer2": "fedc9876"})
    with pytest.raises(IerfError, match="other concepts"):
        export_html(graph, tmp_path / "g.html", faithfulness=tmp_path / "refit")


def test_edge_faithfulness_of_another_model_or_basis_is_refused(tmp_path: Path) -> None:
    graph = write_graph(tmp_path / "g", routes=False)
    with pytest.raises(IerfError, match="no targets.json"):
        export_html(graph, tmp_path / "g.html", faithfulness=tmp_path)
    write_faithfulness(tmp_path / "other", {}, model="efficientnet-lite0")
    with pytest.raises(IerfError, match="measured on 'efficientnet-lite0'"):
        export_html(graph, tmp_path / "g.html", faithfulness=tmp_path / "other")
    doc = json.loads(graph.read_text())
    doc["metadata"]["ierf"]["metadata"]["basis_paths"] = {"layer2": str(tmp_path / "mine")}
    graph.write_text(json.dumps(doc))
    write_faithfulness(tmp_path / "bases", {}, basis_paths={"layer2": str(tmp_path / "theirs")})
    with pytest.raises(IerfError, match="other concepts"):
        export_html(graph, tmp_path / "g.html", faithfulness=tmp_path / "bases")
    write_faithfulness(tmp_path / "old", {}, basis_paths={"layer2": str(tmp_path / "mine")})
    bad = tmp_path / "old" / "layer1-layer2" / "targets.json"
    bad.write_text(bad.read_text().replace('"format_version": 1', '"format_version": 0'))
    with pytest.raises(IerfError, match="re-run `ierf bench graph`"):
        export_html(graph, tmp_path / "g.html", faithfulness=tmp_path / "old")
