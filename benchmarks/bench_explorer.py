"""The explorer page at scale (issue 13, item 4): load-to-interactive and interaction times of
a 5 000-node / 50 000-edge concept graph in headless Chromium (the target: interactive in
under 2 s on the development CPU).

The graph is synthetic (``tests/test_explorer.py``'s ``synthetic_doc``: three concept layers
of 1 800, 1 800 and 1 387 nodes, an error node each, 10 classes, heavy-tailed weights), with a
split tree for the first layer so that supernodes can be timed too. Each measure is the
median of ``--repeats`` fresh page loads, beside a 60-node page loaded the same way (the
browser's own overhead: only the difference is the explorer's).

- ``ready_ms``: navigation start → the page drawn and answering input (``performance.now()``
  when ``main()`` finishes: data parsed, model built, pruned, laid out, edges drawn);
- ``slider_ms``: moving the edge-threshold slider → the next frame drawn (default pruning);
- ``show_all_ms``: every node and every edge drawn (``Nodes/layer`` all, ``Top-k`` all,
  threshold 0), then ``slider_all_ms``: the slider moved with all 50 000 edges in view;
- ``collapse_layer_ms``: the 1 800 nodes of the first layer collapsed one level of their
  bisecting k-means tree (≈ 900 supernodes, 50 000 edges summed) → the next frame.

    python benchmarks/bench_explorer.py [--nodes 1800,1800,1387] [--edges 50000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from ierf.explorer import export_html

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import TIMED_STEP as STEP  # the tests' timed control step
from test_explorer import synthetic_doc  # the tests' graph generator

COLLAPSE = """async (layer) => {
    const t = performance.now();
    window.ierfExplorer.collapseLayer(layer, false);
    await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
    return performance.now() - t; }"""


def split_tree(K: int) -> dict[str, list[int]]:
    """A bisecting split tree over ``K`` leaves: ranges halved, split in breadth-first order
    (a parent before its children, as bisecting k-means numbers them)."""
    parents, sizes = [-1] * (2 * K - 1), [0] * (2 * K - 1)
    queue, node = [(0, K, -1)], K
    while queue:
        lo, hi, parent = queue.pop(0)
        if hi - lo == 1:
            me = lo
        else:
            me, node = node, node + 1
            mid = (lo + hi) // 2
            queue += [(lo, mid, me), (mid, hi, me)]
        parents[me], sizes[me] = parent, hi - lo
    return {"parents": parents, "sizes": sizes}


def make_page(folder: Path, sizes: list[int], n_links: int) -> Path:
    doc = synthetic_doc(sizes, 10, n_links)
    doc["metadata"]["ierf"]["hierarchy"] = {"block1": split_tree(sizes[0])}
    graph = folder / f"graph-{sum(sizes)}.json"
    graph.write_text(json.dumps(doc))
    return export_html(graph, folder / f"graph-{sum(sizes)}.html").path


def measure(browser: Any, page_file: Path, interact: bool) -> dict[str, float]:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.goto(page_file.as_uri())
    page.wait_for_function("() => document.body.dataset.state === 'ready'", timeout=60_000)
    out = {"ready_ms": page.evaluate("window.ierfExplorer.timings.ready")}
    if interact:
        out["slider_ms"] = page.evaluate(STEP, ["#threshold", 0.3])
        out["show_all_ms"] = sum(page.evaluate(STEP, step) for step in (
            ["#per-layer", 0], ["#topk", 0], ["#threshold", 0]))
        out["slider_all_ms"] = page.evaluate(STEP, ["#threshold", 0.02])
        out["collapse_layer_ms"] = page.evaluate(COLLAPSE, "block1")
        out["nodes_after_collapse"] = int(page.evaluate("document.body.dataset.nodes"))
    page.close()
    if problems:
        raise RuntimeError(f"the page failed: {problems[0]}")
    return out


def main(argv: list[str] | None = None) -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--nodes", default="1800,1800,1387", help="concept nodes per layer")
    ap.add_argument("--edges", type=int, default=50_000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.nodes.split(",")]
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        big = make_page(Path(tmp), sizes, args.edges)
        small = make_page(Path(tmp), [20, 20, 10], 300)
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        runs: dict[str, list[dict[str, float]]] = {"big": [], "small": []}
        for _ in range(args.repeats):                 # interleaved: the load drifts alike
            runs["small"].append(measure(browser, small, False))
            runs["big"].append(measure(browser, big, True))
        browser.close()
        nodes = sum(sizes) + len(sizes) + 10
        print(f"graph: {nodes} nodes, {args.edges} edges, page "
              f"{big.stat().st_size / 2**20:.1f} MB; median of {args.repeats} loads")
        small_ready = statistics.median(r["ready_ms"] for r in runs["small"])
        for key in runs["big"][0]:
            value = statistics.median(r[key] for r in runs["big"])
            print(f"  {key:22s} {value:8.0f}")
        print(f"  {'ready_ms (60-node page)':22s} {small_ready:8.0f}")


if __name__ == "__main__":
    main()
