"""Data-set-wide concept graphs from the CLI: merge = one build over all images, resume after
SIGKILL, two torchrun ranks = one process, bad input refused in one line."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch

from ierf.atlas import build_atlas
from ierf.cli import main
from ierf.concepts.basis import ConceptBasis
from ierf.graph import build_graph
from ierf.graph.concept_graph import merge
from ierf.graph.dataset import GRAPH, STORE, read_graph

torch.set_num_threads(2)
N, LAYERS = 12, ["layer2", "layer3"]
BUILD = ["--layers", ",".join(LAYERS), "--n-concepts", "8", "--steps", "4"]


def quiet_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ierf.cli", *args], capture_output=True,
                          text=True, env=quiet_env(), timeout=300, check=False)


@pytest.fixture(scope="module")
def built(toy, tmp_path_factory) -> dict:
    """An atlas, the graph `ierf graph build` made of it (batches of 5: uneven), its bases."""
    root = tmp_path_factory.mktemp("graph")
    atlas = build_atlas(toy, "benchmark:3:test", LAYERS, root / "atlas", samples_per_image=4,
                        n=N, progress=False)
    assert main(["graph", "build", str(atlas.path), *BUILD, "--batch-size", "5",
                 "--out", str(root / "g")]) == 0
    graph = read_graph(root / "g")
    bases = {l: ConceptBasis.load(graph.metadata["basis_paths"][l]) for l in LAYERS}
    return {"root": root, "atlas": atlas, "graph": graph, "bases": bases,
            "x": atlas.load_images(range(N))}


def assert_same_graph(a, b, rtol: float = 1e-4) -> None:
    """Equal up to float32 summation order (means of batch means vs one mean)."""
    assert a.layers == b.layers and torch.equal(a.classes, b.classes)
    for e, f in zip(a.edges, b.edges):
        scale = f.weights.abs().max().item()
        torch.testing.assert_close(e.weights, f.weights, rtol=rtol, atol=rtol * scale)
    for layer in a.nodes:
        n, m = a.nodes[layer], b.nodes[layer]
        torch.testing.assert_close(n.importance, m.importance, rtol=rtol,
                                   atol=rtol * m.importance.abs().max().item())
        torch.testing.assert_close(n.frequency, m.frequency)
        assert n.error_share == pytest.approx(m.error_share, rel=1e-5)
    torch.testing.assert_close(a.logits, b.logits)
    assert a.metadata["image_ids"] == b.metadata["image_ids"]


def test_cli_graph_is_build_graph_over_all_images(toy, built) -> None:
    g = built["graph"]
    ref = build_graph(toy, built["bases"], built["x"], g.classes, n_steps=4,
                      image_ids=built["atlas"].images[:N], progress=False)
    assert_same_graph(g, ref)
    assert g.metadata["n_images"] == N and g.metadata["batch_size"] == 5
    with torch.no_grad():    # default classes: those predicted on the images
        predicted = toy(built["x"]).argmax(1)
    assert g.classes.tolist() == sorted(set(predicted.tolist()))
    c = int(predicted.mode().values)          # a class graph: over the images predicted as c
    mine = (predicted == c).nonzero().flatten()
    per_class = read_graph(built["root"] / "g" / "per-class" / f"{c}.json")
    ref_c = build_graph(toy, built["bases"], built["x"][mine], g.classes, n_steps=4,
                        image_ids=[built["atlas"].images[i] for i in mine], progress=False)
    assert_same_graph(per_class, ref_c)
    assert sorted(p.stem for p in (built["root"] / "g" / "per-class").glob("*.json")) == \
        sorted(str(k) for k in set(predicted.tolist()))


def test_merge_of_per_image_graphs_is_the_batch_graph(toy, built) -> None:
    x, bases = built["x"][:3], built["bases"]
    per = build_graph(toy, bases, x, [0, 5], n_steps=4, per_image=True, progress=False)
    whole = build_graph(toy, bases, x, [0, 5], n_steps=4, progress=False)
    assert_same_graph(merge(per), whole)
    assert merge(per[:1]).metadata["image_ids"] == ["0"]
    with pytest.raises(Exception, match="cannot be merged"):
        merge([per[0], build_graph(toy, bases, x[:1], [0, 6], n_steps=4, progress=False)])


def test_killed_build_resumes_without_recomputing(built) -> None:
    out = built["root"] / "killed"
    args = ["graph", "build", str(built["atlas"].path), *BUILD, "--batch-size", "1",
            "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "ierf.cli", *args], env=quiet_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    done, deadline = 0, time.time() + 180
    while done < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
        try:
            con = sqlite3.connect(out / STORE)
            done = con.execute("SELECT COUNT(*) FROM parts").fetchone()[0]
            con.close()
        except sqlite3.OperationalError:    # not created yet
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    con = sqlite3.connect(out / STORE)
    stored = con.execute("SELECT COUNT(*) FROM parts").fetchone()[0]
    con.close()
    assert 2 <= stored < N, "killed before or after the build"
    assert not (out / GRAPH).exists()
    with pytest.raises(Exception, match="unfinished"):
        read_graph(out)
    resumed = cli(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"/{N - stored} " in resumed.stderr     # the progress bar counts the rest only
    assert_same_graph(read_graph(out), built["graph"])


def test_torchrun_two_ranks_give_the_one_process_graph(built) -> None:
    out = built["root"] / "ranks"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "ierf.cli", "graph", "build",
                          str(built["atlas"].path), *BUILD, "--batch-size", "3",
                          "--out", str(out)], capture_output=True, text=True, env=quiet_env(),
                         timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    assert_same_graph(read_graph(out), built["graph"])


def test_graph_info_prints_the_summary(built, capsys) -> None:
    assert main(["graph", "info", str(built["root"] / "g")]) == 0
    out = capsys.readouterr().out
    g = built["graph"]
    assert repr(g) in out and f"class {g.class_names[0]}" in out
    assert "IG completeness layer3 → output" in out
    kept = g.prune_by_influence(0.8)
    assert (f"influence on the class nodes (ConceptGraph.prune_by_influence): layer2 "
            f"{len(kept.nodes['layer2'].index)}/{len(g.nodes['layer2'].index)}") in out


@pytest.mark.parametrize(("args", "message"), [
    (["--layers", "layer3,layer2"], "does not depend on layer 'layer3'"),
    (["--layers", "layer2,layer4"], "has no layer 'layer4'"),
    (["--layers", "layer2,layer3", "--classes", "99"], "unknown class '99'"),
    (["--layers", "layer2,layer3", "--classes", "not-a-class"], "not-a-class"),
    (["--layers", "layer2,layer3", "--n", "0"], "no images"),
    (["--layers", "layer2,layer2"], "twice"),
    (["--layers", "layer2,layer3", "--n-concepts", "8", "--steps", "2"], "other settings"),
])
def test_bad_input_is_one_clear_line(built, capsys, args, message) -> None:
    out = built["root"] / "g"           # exists: a changed setting must be refused
    before = (out / GRAPH).read_bytes()
    assert main(["graph", "build", str(built["atlas"].path), *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("ierf: error:")
    assert (out / GRAPH).read_bytes() == before


def test_reading_what_is_not_a_graph(tmp_path, capsys) -> None:
    assert main(["graph", "info", str(tmp_path / "nothing")]) == 2
    assert "no concept graph" in capsys.readouterr().err
    (tmp_path / "bad.json").write_text("{}")
    assert main(["graph", "info", str(tmp_path / "bad.json")]) == 2
    assert "not an attribution graph" in capsys.readouterr().err


def test_explain_traces_routes_to_the_class(built, capsys) -> None:
    out = built["root"] / "explain"
    assert main(["graph", "explain", "2", "--graph", str(built["root"] / "g"), "--steps", "4",
                 "--routes", "3", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    import json

    routes = json.loads((out / "routes.json").read_text())
    per_image = read_graph(out / "graph.json")
    target = int(per_image.classes[0])
    assert per_image.metadata["image_ids"] == ["image2"] and len(per_image.classes) == 2
    assert 1 <= len(routes) <= 3
    assert all(r["nodes"][-1] == f"output:{target}" for r in routes)
    assert [r["strength"] for r in routes] == sorted((r["strength"] for r in routes),
                                                     reverse=True)
    assert printed.count("route ") == len(routes)
    for name in ("routes.png", "graph.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (built["root"] / "g" / "graph.png").is_file()     # written by `graph build`
    for folder in (built["root"] / "g", out):                  # thumbnails named in the JSON
        nodes = json.loads((folder / "graph.json").read_text())["nodes"]
        shown = [n for n in nodes if n.get("thumbnails")]
        assert shown and all((folder / n["thumbnails"][0]).is_file() for n in shown)


def test_explain_bad_input(built, capsys) -> None:
    g = str(built["root"] / "g")
    assert main(["graph", "explain", "999", "--graph", g]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["graph", "explain", "0", "--graph", g, "--target", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_bench_graph_ig_orders_curves_better_than_random(built, capsys) -> None:
    """Interlayer C-deletion falls faster and C-insertion rises faster for ICAT-IG than for a
    random order (IERF Fig. 11); the margin is several standard errors."""
    out = built["root"] / "bench"
    assert main(["bench", "graph", str(built["atlas"].path), "--layers", "layer2,layer3",
                 "--methods", "ig,random", "--steps", "8", "--out", str(out)]) == 0
    from ierf.bench.tables import read_csv

    t = read_csv(out / "layer2-layer3" / "table.csv")
    for col, sign in (("C-deletion AUC", 1), ("C-insertion AUC", -1)):
        gap = sign * (t["random"][col] - t["ig"][col])
        se = (t["random"][f"{col} se"] ** 2 + t["ig"][f"{col} se"] ** 2) ** 0.5
        assert gap > 3 * se, (col, t)
    assert (out / "layer2-layer3" / "curves.png").is_file()
    assert "| ig |" in capsys.readouterr().out


def test_bench_graph_ground_truth_table(built, capsys) -> None:
    out = built["root"] / "bench-gt"
    assert main(["bench", "graph", str(built["atlas"].path), "--layers", "layer2,layer3",
                 "--methods", "random", "--n", "8", "--steps", "2", "--ground-truth",
                 "--out", str(out)]) == 0
    import json

    report = json.loads((out / "ground-truth.json").read_text())
    assert set(report["class_parents"]) == set(LAYERS)
    assert report["settings"]["n_images"] == 8
    text = (out / "ground-truth.md").read_text()
    assert text.count("| (a)") == 2 and text.count("| (b)") == 4
    assert "(b) part ← its colour · layer2->layer3" in capsys.readouterr().out
