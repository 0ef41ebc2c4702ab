"""`ierf diagnose` end to end on a small toy-resnet graph: two classes, one class, attacks
that reach and miss their target, bad input in one clear line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ierf.atlas import build_atlas
from ierf.cli import main
from ierf.graph.dataset import read_graph

torch.set_num_threads(2)
LAYERS = ["layer2", "layer3"]


@pytest.fixture(scope="module")
def built(toy, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("diagnose")
    atlas = build_atlas(toy, "benchmark:3:test", LAYERS, root / "atlas", samples_per_image=4,
                        n=8, progress=False)
    assert main(["graph", "build", str(atlas.path), "--layers", ",".join(LAYERS),
                 "--n-concepts", "8", "--steps", "2", "--out", str(root / "g")]) == 0
    with torch.no_grad():
        logits = toy(atlas.load_images([0]))[0]
    ranked = logits.argsort(descending=True).tolist()
    return {"root": root, "g": str(root / "g"), "ranked": ranked,
            "names": toy.class_names}


def thumbnails(graph_file: Path) -> dict[str, list[Path]]:
    """Node id → its thumbnail files (resolved against the graph file's folder)."""
    nodes = json.loads(graph_file.read_text())["nodes"]
    return {n["node_id"]: [graph_file.parent / p for p in n["thumbnails"]] for n in nodes
            if "thumbnails" in n}


def embedded(page: Path) -> int:
    """How many PNG data URIs the explorer page holds."""
    return page.read_text().count("data:image/png;base64,")


def run(built: dict, *args: str) -> int:
    return main(["diagnose", *args, "--graph", built["g"], "--steps", "2", "--routes", "3"])


def test_per_class_graphs_carry_the_data_set_thumbnails(built, tmp_path) -> None:
    g = Path(built["g"])
    main_thumbs = thumbnails(g / "graph.json")
    concepts = {n["node_id"] for n in json.loads((g / "graph.json").read_text())["nodes"]
                if n["kind"] == "concept"}
    files = sorted((g / "per-class").glob("*.json"))
    assert files
    for f in files:
        per = thumbnails(f)
        assert set(per) == concepts == set(main_thumbs)
        for node, paths in per.items():        # the same files, named from per-class/
            assert [p.resolve() for p in paths] == [p.resolve() for p in main_thumbs[node]]
            assert all(p.is_file() for p in paths)
    page = tmp_path / "class.html"
    assert main(["graph", "show", str(files[0]), "-o", str(page)]) == 0
    assert embedded(page) == len(concepts)


def test_two_classes_end_to_end(built, capsys) -> None:
    out = built["root"] / "two"
    assert run(built, "0", "-o", str(out)) == 0
    printed = capsys.readouterr().out
    pred, runner_up = built["ranked"][:2]
    names = built["names"]
    assert (out / "diagnosis.png").is_file() and (out / "graph.png").is_file()
    assert (out / "routes.png").is_file()
    assert "ierf.concept-graph" in (out / "diagnosis.html").read_text()    # the explorer page
    for p in out.glob("*.png"):
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads((out / "diagnosis.json").read_text())
    assert report["predicted_index"] == pred and report["classes"] == [names[pred],
                                                                     names[runner_up]]
    cmp = report["comparison"]
    assert cmp["classes"] == [pred, runner_up]
    assert cmp["deciding_edge"]["score"] == max(e["score"] for e in cmp["deciding_edges"])
    m = cmp["margin"]
    assert m["concepts"] + m["error"] - m["ig_gap"] + m["baseline"] == pytest.approx(m["total"])
    graph = read_graph(out / "graph.json")
    assert graph.classes.tolist() == [pred, runner_up]
    md = (out / "diagnosis.md").read_text()
    assert "Deciding edge" in md and "Shared concepts" in md
    thumbs = thumbnails(out / "graph.json")         # where each drawn node is active
    routed = {n for r in report["routes"].values() for route in r for n in route["nodes"]}
    assert routed <= set(thumbs) and all(p.is_file() for ps in thumbs.values() for p in ps)
    assert embedded(out / "diagnosis.html") == sum(len(ps) for ps in thumbs.values())
    concepts = {n["node_id"] for n in json.loads((out / "graph.json").read_text())["nodes"]
                if n.get("feature_type") == "cross layer transcoder"}
    assert concepts <= set(thumbs)                  # every concept: at least its data-set card
    assert "deciding edge:" in printed and printed.count("route ") >= 2


def test_expected_class_that_is_predicted_shows_its_routes(built, capsys) -> None:
    out = built["root"] / "right"
    pred = built["ranked"][0]
    assert run(built, "0", "--expected", str(pred), "--no-figures", "-o", str(out)) == 0
    printed = capsys.readouterr().out
    assert "nothing to diagnose" in printed
    report = json.loads((out / "diagnosis.json").read_text())
    assert report["correct"] is True and "comparison" not in report
    assert list(report["routes"]) == [built["names"][pred]]
    assert "nothing to diagnose" in (out / "diagnosis.md").read_text()
    assert not list(out.glob("*.png")) and (out / "graph.json").is_file()


def test_attack_end_to_end(built, capsys) -> None:
    out = built["root"] / "pgd"
    target = built["ranked"][-1]
    assert run(built, "0", "--attack", "pgd", "--attack-target", str(target), "--eps", "0.1",
               "--attack-steps", "10", "-o", str(out)) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "diagnosis.json").read_text())
    assert report["attack"]["success"] is True
    assert report["attack"]["linf"] <= 0.1 + 1e-6
    cmp = report["comparison"]
    assert -1 <= cmp["route_flip"] <= 1 and "route flip" in printed
    assert cmp["routes_attacked"][0]["nodes"][-1] == f"output:{target}"
    diff = read_graph(out / "diff-graph.json")
    clean, attacked = read_graph(out / "graph-clean.json"), read_graph(out / "graph-attacked.json")
    torch.testing.assert_close(diff.edges[0].weights,
                               attacked.edges[0].weights - clean.edges[0].weights)
    for name in ("attack.png", "diff-graph.png", "routes-attacked.png", "diff-graph.html"):
        assert (out / name).is_file()
    thumbs = thumbnails(out / "graph-attacked.json")
    assert set(cmp["routes_attacked"][0]["nodes"]) <= set(thumbs)
    assert thumbnails(out / "diff-graph.json") == thumbs


def test_attack_that_misses_is_reported_without_a_diff(built, capsys) -> None:
    out = built["root"] / "weak"
    target = built["ranked"][-1]
    assert run(built, "0", "--attack", "fgsm", "--attack-target", str(target), "--eps", "1e-5",
               "-o", str(out)) == 2
    err = capsys.readouterr().err
    assert "did not reach" in err and "--eps" in err
    report = json.loads((out / "diagnosis.json").read_text())
    assert report["attack"]["success"] is False and "comparison" not in report
    assert not (out / "diff-graph.json").exists()
    assert "FAILED" in (out / "diagnosis.md").read_text()


@pytest.mark.parametrize(("args", "message"), [
    (["0", "--attack-target", "3"], "needs --attack"),
    (["0", "--attack", "fgsm"], "needs --attack-target"),
    (["0", "--attack", "fgsm", "--attack-target", "3", "--versus", "2"], "leave out"),
    (["0", "--model", "efficientnet_lite0"], "was built on 'toy-resnet'"),
    (["0", "--expected", "no-such-class"], "unknown class 'no-such-class'"),
    (["0", "--versus", "99"], "has 8 classes"),
    (["99"], "out of range"),
    (["0", "--attack", "fgsm", "--attack-target", "3", "--step-size", "0.1"], "PGD options"),
])
def test_bad_input_is_one_clear_line(built, capsys, args, message) -> None:
    assert run(built, *args) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_prediction_as_versus_or_attack_target_is_refused(built, capsys) -> None:
    pred = str(built["ranked"][0])
    assert run(built, "0", "--versus", pred) == 2
    assert "is the predicted class itself" in capsys.readouterr().err
    assert run(built, "0", "--attack", "fgsm", "--attack-target", pred) == 2
    assert "already predicts" in capsys.readouterr().err


def test_unreadable_image(built, tmp_path, capsys) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert run(built, str(bad)) == 2
    assert "not a readable image" in capsys.readouterr().err
    assert run(built, str(tmp_path / "missing.png")) == 2
    assert "no image file" in capsys.readouterr().err


def test_parser_needs_no_torch_and_knows_every_attack() -> None:
    import subprocess
    import sys

    code = ("import sys; from ierf.cli import _parser; "
            "_parser().parse_args(['diagnose', 'x', '--graph', 'g', '--attack', 'pgd']); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    from ierf.cli.diagnose import ATTACKS
    from ierf.diagnose import ATTACKS as IMPLEMENTED

    assert ATTACKS == IMPLEMENTED


def test_data_set_cards_can_join_the_per_image_thumbnails(built, tmp_path) -> None:
    from ierf.cli.graph import graph_thumbnails
    from ierf.diagnose.report import node_images

    cards = graph_thumbnails(built["g"])
    assert cards == {k: [str(p.resolve()) for p in v] for k, v in
                     thumbnails(Path(built["g"]) / "graph.json").items()}
    shown = node_images(tmp_path, cards=cards)
    assert {k: [str((tmp_path / p).resolve()) for p in v] for k, v in shown.items()} == cards


def test_bench_graph_writes_per_target_aucs_the_explorer_shows(built, tmp_path, capsys
                                                               ) -> None:
    """`ierf bench graph`'s per-target AUCs, weighted by their pairs, average to its table's
    means; `graph show --faithfulness` accepts them for the graph of the same atlas."""
    from ierf.bench.tables import read_csv

    out = tmp_path / "bench"
    atlas = str(Path(built["g"]).parent / "atlas")
    assert main(["bench", "graph", atlas, "--layers", "layer2,layer3", "--methods",
                 "ig,random", "--n", "4", "--steps", "2", "--curve-steps", "4",
                 "--out", str(out)]) == 0
    data = json.loads((out / "layer2-layer3" / "targets.json").read_text())
    table = read_csv(out / "layer2-layer3" / "table.csv")
    nodes = data["nodes"].values()
    total = sum(v["pairs"] for v in nodes)
    assert total == table["ig"]["C-deletion AUC n"]
    for method in ("ig", "random"):
        for mode, column in (("deletion", "C-deletion AUC"), ("insertion", "C-insertion AUC")):
            mean = sum(v["pairs"] * v[mode][method] for v in nodes) / total
            assert mean == pytest.approx(table[method][column], rel=1e-5, abs=1e-6)
    assert all(k.startswith("layer3:") for k in data["nodes"])
    page = tmp_path / "g.html"
    assert main(["graph", "show", built["g"], "-o", str(page), "--faithfulness",
                 str(out)]) == 0
    assert f"{len(data['nodes'])} with edge faithfulness" in capsys.readouterr().out


def test_explain_graph_carries_located_and_data_set_thumbnails(built, tmp_path) -> None:
    """`graph explain`'s per-image graph: every concept has the data-set graph's card, the
    located ones first their own image dimmed outside their iERF."""
    out = tmp_path / "explain"
    assert main(["graph", "explain", "0", "--graph", built["g"], "--steps", "2",
                 "--routes", "2", "-o", str(out)]) == 0
    cards = thumbnails(Path(built["g"]) / "graph.json")
    shown = thumbnails(out / "graph.json")
    routes = json.loads((out / "routes.json").read_text())
    for node, paths in cards.items():
        assert [p.resolve() for p in shown[node][-1:]] == [p.resolve() for p in paths]
    located = {n for r in routes for n in r["nodes"]}
    for node in located:
        assert shown[node][0].parent == out / "thumbnails" and shown[node][0].is_file()
