"""The explorer page in a real browser (issue 13): Debian's Chromium, driven headless by
Playwright's Python package through its executable path (Playwright's own browser download
is not used). Skipped only when Chromium or Playwright is absent; .ci/run installs Chromium.

Set IERF_EXPLORER_SHOTS=DIR to keep a screenshot of each view in DIR."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from browser import TIMED_STEP, VIEWPORT, launch, shot
from test_explorer import (
    XSS,
    auc_entry,
    concept_graph,
    fitted_tree,
    reference_view,
    synthetic_doc,
    with_tree,
    write_faithfulness,
    write_graph,
)

from ierf.explorer import export_html, render_page

XSS_CLASS = "<b onmouseover=alert(3)>cat</b>"
#: elements the labels above would create if they were read as markup
INJECTED = "document.querySelectorAll('img[src=\"x\"], [onerror], [onmouseover]').length"


@dataclass
class Opened:
    """A page and what went wrong in it (console errors, uncaught exceptions, requests
    leaving file: / data: / blob:, dialogs)."""

    page: Any
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def state(self) -> dict[str, Any]:
        return self.page.evaluate("JSON.parse(JSON.stringify(window.ierfExplorer.state))")

    def counts(self) -> tuple[int, int]:
        data = self.page.evaluate("({...document.body.dataset})")
        return int(data["nodes"]), int(data["edges"])

    def shot(self, name: str) -> None:
        shot(self.page, f"{name}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The pages the tests open."""
    root = tmp_path_factory.mktemp("explorer")
    write_graph(root / "main", [30, 26], labels={"layer1:0": XSS, "output:1": XSS_CLASS})
    write_graph(root / "bare", [6, 5], thumbnails="none", routes=False, seed=1)
    out = {"main": export_html(root / "main", root / "main.html").path,
           "bare": export_html(root / "bare", root / "bare.html").path,
           "folder": export_html(root / "main", root / "site" / "folder.html",
                                 images="folder").path}
    doc = json.loads((root / "bare" / "graph.json").read_text())
    for name, version in (("newer", 99), ("older", 0)):
        bad = json.loads(json.dumps(doc))
        bad["metadata"]["ierf"]["format_version"] = version
        out[name] = root / f"{name}.html"         # the page checks too, not only the export
        out[name].write_text(render_page({"graph": bad, "images": {}, "routes": None,
                                          "explorer": {}}, name))
    empty = dict(doc, nodes=[], links=[])
    out["empty"] = export_html(_write(root / "empty.json", empty), root / "empty.html").path
    out["no-edges"] = export_html(_write(root / "no-edges.json", dict(doc, links=[])),
                                  root / "no-edges.html").path
    markup = {f"layer1:{k}": f"{XSS} {k}" for k in range(TREE_SIZES[0])}   # members' labels
    tree = with_tree(write_graph(root / "tree", TREE_SIZES, labels=markup, routes=False,
                                 seed=TREE_SEED), "layer1", fitted_tree(TREE_SIZES[0]).tree)
    out["tree"] = export_html(tree, root / "tree.html").path
    out["diff"] = export_html(_one_sided(root / "a", "layer2:4", 1), root / "diff.html",
                              diff=_one_sided(root / "b", "layer1:2", 2)).path
    write_faithfulness(root / "bench", {"layer2:3": auc_entry(0.125, 0.875, pairs=7)})
    out["faith"] = export_html(root / "bare", root / "faith.html", routes=False,
                               faithfulness=root / "bench").path
    out["broken"] = root / "broken.html"
    out["broken"].write_text(out["bare"].read_text().replace(
        '<script id="ierf-data" type="application/json">{', '<script id="ierf-data" '
        'type="application/json">{oops', 1))
    return out


TREE_SIZES, TREE_SEED = [30, 26], 5


def _one_sided(folder: Path, node: str, seed: int) -> Path:
    """A graph without ``node`` (and its edges), for a diff where it is in one graph only."""
    graph = write_graph(folder, [6, 5], routes=False, seed=seed)
    doc = json.loads(graph.read_text())
    doc["nodes"] = [n for n in doc["nodes"] if n["node_id"] != node]
    doc["links"] = [l for l in doc["links"] if node not in (l["source"], l["target"])]
    return _write(graph, doc)


def _write(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture(scope="module")
def context(browser: Any) -> Iterator[Any]:
    """One browser context for the module's pages (a new context per page is slow)."""
    c = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    yield c
    c.close()


@pytest.fixture
def open_page(browser: Any, context: Any) -> Iterator[Callable[..., Opened]]:
    opened_pages, own = [], []

    def opener(path: Path, fragment: str = "", offline: bool = False) -> Opened:
        where = context
        if offline:                 # its own context, offline, where a request to a host fails
            where = browser.new_context(viewport=VIEWPORT, offline=True)
            where.route(re.compile(r"^(https?|wss?|ftp)://"), lambda route: route.abort())
            own.append(where)
        page = where.new_page()
        opened_pages.append(page)
        opened = Opened(page)
        page.on("console", lambda m: m.type == "error" and opened.problems.append(m.text))
        page.on("pageerror", lambda e: opened.problems.append(f"uncaught: {e}"))
        page.on("dialog", lambda d: (opened.problems.append(f"dialog: {d.message}"),
                                     d.dismiss()))
        page.on("request", lambda r: opened.requests.append(r.url))
        page.goto(path.as_uri() + fragment)
        page.wait_for_function("document.body.dataset.state")
        return opened

    yield opener
    for page in opened_pages:
        page.close()
    for c in own:
        c.close()


def clean(opened: Opened) -> None:
    """No console error, exception or dialog, and nothing but the page itself, data: and
    blob: URLs requested."""
    assert opened.problems == []
    foreign = [u for u in opened.requests if not u.startswith(("file:", "data:", "blob:"))]
    assert foreign == []


def drawn_ids(opened: Opened, css: str = "") -> set[str]:
    return set(opened.page.eval_on_selector_all(
        f"#node-layer g.node{css}", "els => els.map(e => e.getAttribute('data-id'))"))


def doc_of(pages: dict[str, Path]) -> dict[str, Any]:
    return json.loads((pages["main"].parent / "main" / "graph.json").read_text())


def route_nodes(pages: dict[str, Path]) -> set[str]:
    """The nodes of the main page's routes (drawn whatever the pruning, like pins)."""
    routes = json.loads((pages["main"].parent / "main" / "routes.json").read_text())
    return {n for r in routes for n in r["nodes"]}


def expected(pages: dict[str, Path], **settings: Any) -> tuple[set[str], list]:
    return reference_view(doc_of(pages), forced=route_nodes(pages) | set(
        settings.pop("forced", ())), **settings)


def set_threshold(opened: Opened, value: float) -> None:
    opened.page.eval_on_selector("#threshold", "(e, v) => { e.value = String(v); "
                                 "e.dispatchEvent(new Event('input', {bubbles: true})); }", value)


# -- the graph view ------------------------------------------------------------------------


def test_page_draws_what_the_json_holds_after_pruning(open_page, pages) -> None:
    opened = open_page(pages["main"])
    assert opened.page.evaluate("document.body.dataset.state") == "ready"
    doc = doc_of(pages)
    kept, links = expected(pages)
    assert drawn_ids(opened) == kept
    assert opened.counts() == (len(kept), len(links)) and 0 < len(links) < len(doc["links"])
    assert len(kept) < len(doc["nodes"])                  # 30 and 26 concepts: 24 shown
    status = opened.page.text_content("#status")
    assert f"{len(kept)} of {len(doc['nodes'])} nodes" in status
    assert f"{len(links)} of {len(doc['links'])} edges" in status
    headers = opened.page.eval_on_selector_all("#columns .column-title",
                                               "els => els.map(e => e.textContent)")
    assert headers == ["layer1", "layer2", "output"]
    opened.shot("graph-view")
    clean(opened)


def test_controls_prune_as_the_json_says(open_page, pages) -> None:
    doc = doc_of(pages)
    opened = open_page(pages["main"], "#n=8&k=2&t=0.2")
    kept, links = expected(pages, threshold=0.2, top_k=2, per_layer=8)
    assert drawn_ids(opened) == kept and opened.counts() == (len(kept), len(links))
    opened.page.select_option("#per-layer", "0")          # all nodes, all parents
    opened.page.select_option("#topk", "0")
    set_threshold(opened, 0)
    kept, links = expected(pages, threshold=0, top_k=0, per_layer=0)
    assert len(kept) == len(doc["nodes"]) and len(links) == len(doc["links"])
    assert opened.counts() == (len(kept), len(links))
    opened.shot("all-nodes-all-edges")
    clean(opened)


def test_slider_removes_edges(open_page, pages) -> None:
    opened = open_page(pages["main"])
    before = opened.counts()[1]
    set_threshold(opened, 0.5)
    after = opened.counts()[1]
    assert after < before and after == len(expected(pages, threshold=0.5)[1])
    assert opened.page.text_content("#threshold-value") == "50%"
    set_threshold(opened, 1)                    # at most each column pair's strongest edge
    assert opened.counts()[1] == len(expected(pages, threshold=1)[1]) <= 2
    opened.shot("threshold-high")
    clean(opened)


def test_click_opens_the_panel_with_the_image_loaded(open_page, pages) -> None:
    opened = open_page(pages["main"])
    page = opened.page
    page.click('g.node[data-id="layer2:3"]')
    assert page.text_content("#panel .node-label") == "layer2 concept 3"
    img = page.wait_for_selector("#panel img.thumb-large")
    page.wait_for_function("img => img.complete && img.naturalWidth === 24", arg=img)
    node = next(n for n in doc_of(pages)["nodes"] if n["node_id"] == "layer2:3")
    text = page.text_content("#panel")
    assert "activation (mean coefficient)" in text and "frequency" in text
    assert f"{node['frequency']:.3g}"[:4] in text
    bars = page.eval_on_selector_all("#panel ul.bars li", "els => els.length")
    assert bars == len(node["importance"])
    assert opened.state()["selected"] == "layer2:3"
    assert "sel=layer2%3A3" in page.url
    opened.shot("node-panel")
    page.click('g.node[data-id="layer1:1"]')              # the node without a thumbnail
    assert page.text_content("#panel .no-thumb") == "No thumbnail in the graph file."
    assert page.eval_on_selector('g.node[data-id="layer1:1"]',
                                 "g => g.querySelector('.placeholder') !== null")
    page.keyboard.press("Escape")
    assert page.text_content("#panel h2") == "Graph" and "sel=" not in page.url
    clean(opened)


def test_hover_lists_in_and_out_edges_by_weight(open_page, pages) -> None:
    opened = open_page(pages["main"])
    page = opened.page
    page.hover('g.node[data-id="layer2:0"]')
    tip = page.wait_for_selector("#tooltip:not([hidden])")
    assert "layer2 concept 0" in tip.text_content()
    values = page.eval_on_selector_all("#tooltip .tip-cols > div:first-child li .value",
                                       "els => els.map(e => Number(e.textContent))")
    assert values and [abs(v) for v in values] == sorted(map(abs, values), reverse=True)
    node_in = [l for l in doc_of(pages)["links"] if l["target"] == "layer2:0"]
    assert f"in ({len(node_in)})" in tip.text_content()
    opened.shot("hover")
    clean(opened)


def test_class_selector_highlights_the_ancestry(open_page, pages) -> None:
    opened = open_page(pages["main"])
    page = opened.page
    page.select_option("#class-select", "output:2")
    kept, links = expected(pages)
    ancestors, todo = {"output:2"}, ["output:2"]
    while todo:
        t = todo.pop()
        for s, _ in (lk for lk in links if lk[1] == t):
            if s not in ancestors:
                ancestors.add(s)
                todo.append(s)
    assert drawn_ids(opened, ".ancestor") == ancestors
    assert drawn_ids(opened, ".dim") == kept - ancestors != set()
    assert "c=output%3A2" in page.url
    opened.shot("class-ancestry")
    clean(opened)


def test_search_finds_a_node_even_when_pruned(open_page, pages) -> None:
    opened = open_page(pages["main"], "#n=8")
    page = opened.page
    hidden = "layer1:29"
    assert hidden not in drawn_ids(opened)
    page.click("#search")
    page.keyboard.type("layer1 concept 29")
    first = page.wait_for_selector("#search-results li[data-id]")
    assert first.get_attribute("data-id") == hidden
    opened.shot("search")
    page.keyboard.press("Enter")
    assert page.text_content("#panel .node-label") == "layer1 concept 29"
    assert hidden in drawn_ids(opened, ".selected")        # drawn now, and selected
    drawn = min(i for i in drawn_ids(opened) if i.startswith("layer2:"))
    page.fill("#search", f"layer2 concept {drawn.split(':')[1]}")   # drawn matches marked
    assert drawn in drawn_ids(opened, ".match") <= {f"layer2:{i}" for i in range(30)}
    page.fill("#search", "output:1")                       # ids are searched too
    assert page.wait_for_selector("#search-results li[data-id]").get_attribute(
        "data-id") == "output:1"
    page.fill("#search", "no such thing anywhere")
    assert page.text_content("#search-results") == "no node matches"
    clean(opened)


def test_panel_shows_the_faithfulness_of_a_concepts_incoming_edges(open_page, pages
                                                                    ) -> None:
    opened = open_page(pages["faith"], "#sel=layer2%3A3")
    page = opened.page
    rows = page.eval_on_selector_all("#panel table.faithfulness tr[data-method]", "els => "
                                     "els.map(e => [...e.children].map(c => c.textContent))")
    assert rows == [["ig (these edges)", "0.125", "0.875"], ["random", "0.5", "0.4"]]
    text = page.text_content("#panel")
    assert "7 (image, target) pair(s)" in text and "parents in layer1" in text
    assert "Lower deletion AUC / higher insertion AUC = the edges rank the parents " \
           "faithfully" in text
    opened.shot("panel-faithfulness")
    page.evaluate("window.ierfExplorer.select('layer2:4')")          # a target not measured
    assert "Not measured" in page.text_content("#panel")
    page.evaluate("window.ierfExplorer.select('layer1:2')")          # no edge set ends here
    assert "Faithfulness" not in page.text_content("#panel")
    clean(opened)


def test_view_state_round_trips_through_the_url(open_page, pages) -> None:
    opened = open_page(pages["main"])
    page = opened.page
    page.select_option("#class-select", "output:0")
    page.select_option("#topk", "3")
    set_threshold(opened, 0.15)
    page.click('g.node[data-id="layer1:2"]', modifiers=["Control"])
    page.click('g.node[data-id="layer2:4"]', modifiers=["Control"])
    page.click('g.node[data-id="layer2:5"]')
    box = page.locator("#stage").bounding_box()               # zoom in, then pan by a drag
    page.mouse.move(box["x"] + 300, box["y"] + 200)
    page.mouse.wheel(0, -400)
    page.mouse.down()
    page.mouse.move(box["x"] + 380, box["y"] + 150, steps=4)
    page.mouse.up()
    page.wait_for_function("() => location.hash.includes('v=')")
    state = opened.state()
    assert state["pins"] == ["layer1:2", "layer2:4"] and state["selected"] == "layer2:5"
    assert state["view"]["k"] > 1.2 * page.evaluate("(() => { const a = window.ierfExplorer; "
                                                    "a.fit(); const k = a.t.k; a.showView("
                                                    f"{json.dumps(state['view'])}); return k; }})()")
    shown = page.evaluate("({...window.ierfExplorer.t})")
    page.wait_for_function("() => location.hash.includes('v=')")
    url = page.url
    assert "#" in url and "pin=layer1%3A2" in url
    again = open_page(Path(url.split("#")[0].removeprefix("file://")), "#" + url.split("#")[1])
    view = again.state().pop("view")
    assert again.state() | {"view": None} == state | {"view": None}
    assert view == pytest.approx(state["view"], abs=0.06)          # x, y written to 0.1
    assert again.page.evaluate("({...window.ierfExplorer.t})") == pytest.approx(shown, abs=0.2)
    assert drawn_ids(again, ".pinned") == {"layer1:2", "layer2:4"}
    assert drawn_ids(again, ".selected") == {"layer2:5"}
    assert again.page.input_value("#class-select") == "output:0"
    assert again.page.input_value("#topk") == "3"
    assert again.page.input_value("#threshold") == "0.15"
    assert again.counts() == opened.counts()
    again.shot("url-state")
    clean(opened)
    clean(again)


def test_exports_svg_png_and_pinned_json(open_page, pages) -> None:
    opened = open_page(pages["main"])
    page = opened.page
    page.click('g.node[data-id="layer1:3"]', modifiers=["Control"])
    page.click('g.node[data-id="layer2:3"]', modifiers=["Control"])
    with page.expect_download() as got:
        page.click("#export-svg")
    svg = Path(got.value.path()).read_text()
    assert svg.startswith("<svg") and svg.count('class="node ') == opened.counts()[0]
    assert svg.count("<path") >= opened.counts()[1] and "data:image/png;base64," in svg
    with page.expect_download() as got:
        page.click("#export-png")
    assert Path(got.value.path()).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    with page.expect_download() as got:
        page.click("#export-json")
    sub = json.loads(Path(got.value.path()).read_text())
    assert [n["node_id"] for n in sub["nodes"]] == ["layer1:3", "layer2:3"]
    assert sub["qParams"]["pinnedIds"] == ["layer1:3", "layer2:3"]
    weight = next(l["weight"] for l in doc_of(pages)["links"]
                  if (l["source"], l["target"]) == ("layer1:3", "layer2:3"))
    assert sub["links"] == [{"source": "layer1:3", "target": "layer2:3", "weight": weight}]
    assert sub["metadata"]["ierf"]["format"] == "ierf.concept-graph"
    clean(opened)


def test_routes_of_one_image_are_overlaid(open_page, pages) -> None:
    opened = open_page(pages["main"])
    page = opened.page
    routes = json.loads((pages["main"].parent / "main" / "routes.json").read_text())
    on_routes = {n for r in routes for n in r["nodes"]}
    assert drawn_ids(opened, ".route") == on_routes and on_routes <= drawn_ids(opened)
    items = page.eval_on_selector_all("#panel ol.routes li", "els => els.length")
    assert items == len(routes)
    page.click("#panel ol.routes li >> nth=0")
    assert page.eval_on_selector("#panel ol.routes li", "e => e.classList.contains('active')")
    opened.shot("routes")
    page.uncheck("#routes")
    assert drawn_ids(opened, ".route") == set() and "routes=0" in page.url
    clean(opened)


def test_works_with_the_network_disabled(open_page, pages) -> None:
    for name in ("main", "folder"):
        opened = open_page(pages[name], offline=True)
        page = opened.page
        assert page.evaluate("document.body.dataset.state") == "ready"
        page.click('g.node[data-id="output:0"]')
        img = page.wait_for_selector("#panel img.thumb-large")
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=img)
        clean(opened)
        if name == "folder":
            assert any("folder_files/" in u for u in opened.requests)


def test_labels_and_class_names_are_text_not_markup(open_page, pages) -> None:
    opened = open_page(pages["main"])
    page = opened.page
    assert page.evaluate(INJECTED) == 0
    assert page.text_content('g.node[data-id="layer1:0"] .label').startswith("<img src=x")
    page.click('g.node[data-id="layer1:0"]')
    assert page.text_content("#panel .node-label") == XSS
    options = page.eval_on_selector_all("#class-select option", "els => els.map(e => e.text)")
    assert XSS_CLASS in options
    assert XSS_CLASS in page.text_content("#panel ul.bars")
    page.hover('g.node[data-id="output:1"]')
    assert XSS_CLASS in page.text_content("#tooltip")
    page.fill("#search", "onerror")
    assert XSS in page.text_content("#search-results")
    assert page.evaluate(INJECTED) == 0
    opened.shot("labels-as-text")
    clean(opened)                                         # no alert dialog came up


@pytest.mark.parametrize("name, words", [
    ("newer", "newer than this explorer reads"), ("older", "Rebuild the graph"),
    ("broken", "cannot be read"), ("empty", "has no nodes"), ("no-edges", "has no edges"),
    ("bare", "has no thumbnails")])
def test_bad_input_shows_a_message_never_a_blank_page(open_page, pages, name, words) -> None:
    opened = open_page(pages[name])
    assert words in opened.page.text_content("#notices")
    fatal = name in ("newer", "older", "broken")
    assert opened.page.evaluate("document.body.dataset.state") == ("error" if fatal
                                                                    else "ready")
    if fatal:
        assert words in opened.page.text_content("#stage")
    if name == "bare":
        assert opened.page.eval_on_selector_all("g.node .placeholder", "e => e.length") == \
            opened.counts()[0]
    opened.shot(f"bad-input-{name}")
    clean(opened)


# -- supernodes ---------------------------------------------------------------------------


def leaves_under(parents: list[int], node: int) -> list[int]:
    """The leaves (concepts) of a split tree under tree node ``node``."""
    K = (len(parents) + 1) // 2

    def above(leaf: int) -> set[int]:
        found = set()
        while leaf >= 0:
            found.add(leaf)
            leaf = parents[leaf]
        return found
    return [k for k in range(K) if node in above(k)]


def page_links(opened: Opened) -> dict[tuple[str, str], float]:
    pairs = opened.page.evaluate("window.ierfExplorer.model.links.map(l => "
                                 "[l.source.id, l.target.id, l.weight])")
    return {(s, t): w for s, t, w in pairs}


def test_supernode_collapse_sums_its_members_edges_and_expands(open_page, pages) -> None:
    """Collapsing a node gives its bisecting k-means parent, whose edges and importances
    are those of `ierf.graph.hierarchy.collapse` (an independent implementation);
    expanding restores the graph; the collapsed view round-trips through the URL."""
    from ierf.graph.export import to_dict
    from ierf.graph.hierarchy import collapse

    parents = fitted_tree(TREE_SIZES[0]).tree.parents.tolist()
    doc = json.loads((pages["tree"].parent / "tree" / "graph.json").read_text())
    opened = open_page(pages["tree"], "#n=0&k=0&t=0")          # every node and edge drawn
    page = opened.page
    assert opened.counts() == (len(doc["nodes"]), len(doc["links"]))
    page.click('g.node[data-id="layer1:4"]')
    page.click("#collapse-button")
    key = f"layer1:{parents[4]}"
    members = [f"layer1:{k}" for k in leaves_under(parents, parents[4])]
    assert opened.state()["collapsed"] == [key] and opened.state()["selected"] == key
    merged = to_dict(collapse(concept_graph(TREE_SIZES, seed=TREE_SEED), "layer1",
                              {key: members}), "x")
    assert opened.counts() == (len(merged["nodes"]), len(merged["links"]))
    want = {(l["source"], l["target"]): l["weight"] for l in merged["links"]}
    got = page_links(opened)
    assert got.keys() == want.keys()
    assert all(abs(got[e] - want[e]) <= 1e-5 * (1 + abs(want[e])) for e in want)
    node = next(n for n in merged["nodes"] if n["node_id"] == key)
    shown = page.evaluate(f"window.ierfExplorer.model.byId.get({json.dumps(key)}).raw")
    assert shown["importance"] == pytest.approx(node["importance"], rel=1e-5, abs=1e-6)
    assert shown["supernode"]["members"] == members
    assert page.locator(f'g.node.super[data-id="{key}"]').count() == 1
    listed = page.eval_on_selector_all("#panel ul.members li", "els => els.map(e => "
                                       "e.textContent)")
    assert len(listed) == min(len(members), 12) and listed[0].startswith(XSS)
    assert page.text_content("#panel .node-label").startswith(XSS)
    assert page.evaluate(INJECTED) == 0
    assert f"sup=layer1%3A{parents[4]}" in page.url
    opened.shot("supernode")
    junk = "&sup=layer1%3A3&sup=nowhere%3A40&sup=layer1%3A999"    # a leaf, no such layer/node
    again = open_page(pages["tree"], "#" + page.url.split("#")[1] + junk)
    assert again.counts() == opened.counts() and drawn_ids(again, ".super") == {key}
    assert again.state()["collapsed"] == [key]
    page.click("#expand-button")
    halves = [c for c in range(len(parents)) if parents[c] == parents[4]]
    assert opened.state()["collapsed"] == sorted(
        f"layer1:{c}" for c in halves if len(leaves_under(parents, c)) >= 2)
    page.keyboard.press("Escape")
    page.click('#panel button[data-layer="layer1"]')            # the whole layer, a level
    level = {parents[k] for k in range(TREE_SIZES[0])}
    tops = {c for c in level if not any(a in level for a in
                                         _ancestors(parents, c))}
    assert set(opened.state()["collapsed"]) == {f"layer1:{c}" for c in tops}
    assert opened.counts()[0] == len(doc["nodes"]) - TREE_SIZES[0] + len(tops) + sum(
        1 for k in range(TREE_SIZES[0]) if not any(k in leaves_under(parents, c) for c in tops))
    opened.shot("supernodes-layer")
    page.click('#panel button[data-expand="layer1"]')
    assert opened.state()["collapsed"] == []
    assert opened.counts() == (len(doc["nodes"]), len(doc["links"]))
    assert page_links(opened) == {(l["source"], l["target"]): l["weight"] for l in doc["links"]}
    clean(opened)
    clean(again)


def test_search_finds_concepts_inside_a_collapsed_supernode(open_page, pages) -> None:
    """A concept collapsed into a supernode is found by its id or label; the result offers
    the supernode, and choosing the concept expands just enough to draw it."""
    parents = fitted_tree(TREE_SIZES[0]).tree.parents.tolist()
    key = f"layer1:{parents[parents[4]]}"                      # two levels above concept 4
    opened = open_page(pages["tree"], f"#n=0&k=0&t=0&sup={key.replace(':', '%3A')}")
    page = opened.page
    assert opened.state()["collapsed"] == [key] and "layer1:4" not in drawn_ids(opened)
    page.fill("#search", "layer1:4")
    first = page.wait_for_selector("#search-results li[data-id]")
    assert (first.get_attribute("data-id"), first.get_attribute("data-super")) == (
        "layer1:4", key)
    assert "in supernode" in first.text_content() and page.evaluate(INJECTED) == 0
    opened.shot("search-supernode")
    page.click("#search-results li[data-id] button.super-pick")   # select the supernode
    assert opened.state()["selected"] == key and opened.state()["collapsed"] == [key]
    page.fill("#search", "layer1:4")
    page.keyboard.press("Enter")                                    # expand and select it
    state = opened.state()
    assert state["selected"] == "layer1:4" and "layer1:4" in drawn_ids(opened, ".selected")
    under = set(leaves_under(parents, int(key.split(":")[1])))
    for k in state["collapsed"]:           # the rest of the cluster stays collapsed
        leaves = set(leaves_under(parents, int(k.split(":")[1])))
        assert leaves < under and 4 not in leaves and len(leaves) >= 2
    assert state["collapsed"] != []
    page.fill("#search", "layer1:4")                    # found directly now
    assert page.wait_for_selector("#search-results li[data-id]").get_attribute(
        "data-super") is None
    clean(opened)


def _ancestors(parents: list[int], node: int) -> list[int]:
    found = []
    while parents[node] >= 0:
        node = parents[node]
        found.append(node)
    return found


# -- diff mode -----------------------------------------------------------------------------


def test_diff_page_colours_edges_by_change_and_marks_one_sided_nodes(open_page, pages
                                                                      ) -> None:
    opened = open_page(pages["diff"], "#n=0&k=0&t=0")
    page = opened.page
    a = json.loads((pages["diff"].parent / "a" / "graph.json").read_text())
    b = json.loads((pages["diff"].parent / "b" / "graph.json").read_text())
    wa = {(l["source"], l["target"]): l["weight"] for l in a["links"]}
    wb = {(l["source"], l["target"]): l["weight"] for l in b["links"]}
    change = {e: wb.get(e, 0.0) - wa.get(e, 0.0) for e in wa.keys() | wb.keys()}
    change = {e: w for e, w in change.items() if w != 0}
    nodes = {n["node_id"] for n in a["nodes"]} | {n["node_id"] for n in b["nodes"]}
    assert opened.counts() == (len(nodes), len(change))
    assert page_links(opened) == pytest.approx(change)
    assert drawn_ids(opened, ".only-a") == {"layer1:2"}
    assert drawn_ids(opened, ".only-b") == {"layer2:4"}
    assert "difference b - a" in page.text_content("#status")
    with page.expect_download() as got:                    # colour = sign of the change
        page.click("#export-svg")
    strokes = re.findall(r'<path d="[^"]*" stroke="(#[0-9a-f]{6})"', Path(
        got.value.path()).read_text())
    assert strokes.count("#c0392b") == sum(w > 0 for w in change.values())
    assert strokes.count("#2e6fbd") == sum(w < 0 for w in change.values())
    page.click('g.node[data-id="layer1:2"]')
    assert "only in A" in page.text_content("#panel .only-note")
    assert page.locator("#panel table.sides tr").count() > 2
    assert "absent" in page.text_content("#panel table.sides")
    opened.shot("diff")
    clean(opened)


CANVAS_BOXES = """() => {
  const app = window.ierfExplorer;
  const byId = (id) => app.model.byId.get(id);
  const plain = app.view.nodes.find((n) => n.kind === "concept" && !n.raw.diff_only);
  const other = app.view.nodes.find((n) => n.kind === "concept" && !n.raw.diff_only && n !== plain);
  const error = app.view.nodes.find((n) => n.kind === "error");
  const raw = other.raw;
  other.raw = { ...raw, supernode: { members: ["x", "y"] } };
  const drawn = [];
  const ctx = app.ctx, strokeRect = ctx.strokeRect;
  ctx.strokeRect = function (x, y, w, h) {
    drawn.push([this.strokeStyle, this.getLineDash().map((d) => d * app.t.k), this.lineWidth * app.t.k]);
    return strokeRect.call(this, x, y, w, h);
  };
  app.canvasNodes = [plain, other, byId("layer1:2"), byId("layer2:4"), error];
  app.drawNow();
  ctx.strokeRect = strokeRect;
  other.raw = raw;
  app.draw();
  return drawn;
}"""


def test_canvas_boxes_keep_supernode_diff_and_error_marks(open_page, pages) -> None:
    """Zoomed far out a large view draws nodes as canvas boxes; they keep what the SVG
    groups show (svg.css): a supernode's purple box and the stack behind it, the dashed grey
    (only in A) / green (only in B) box of a diff side, the error node's dashed box."""
    opened = open_page(pages["diff"], "#n=0&k=0&t=0")
    drawn = opened.page.evaluate(CANVAS_BOXES)
    expected = [["#8c8c8c", [], 1],                          # a concept
                ["#8c8c8c", [], 1], ["#5f3dc4", [], 1.8],    # a supernode: stack, box
                ["#868e96", [5, 3], 2], ["#2b8a3e", [5, 3], 2],   # only in A, only in B
                ["#8c8c8c", [4, 3], 1]]                      # the error node
    assert [d[0] for d in drawn] == [e[0] for e in expected]
    for (_, dash, width), (_, want_dash, want_width) in zip(drawn, expected, strict=True):
        assert dash == pytest.approx(want_dash) and width == pytest.approx(want_width)
    clean(opened)


# -- scale ---------------------------------------------------------------------------------


def test_five_thousand_nodes_fifty_thousand_edges(open_page, tmp_path) -> None:
    """Load and interaction times of a 5 000-node / 50 000-edge graph (printed; the target
    is under 2 s to interactive on the development CPU, asserted with headroom)."""
    doc = synthetic_doc([1800, 1800, 1387], 10, 50_000)
    assert (len(doc["nodes"]), len(doc["links"])) == (5000, 50_000)
    page_file = export_html(_write(tmp_path / "big.json", doc), tmp_path / "big.html").path
    began = time.perf_counter()
    opened = open_page(page_file)
    wall = time.perf_counter() - began
    page = opened.page
    timings = page.evaluate("window.ierfExplorer.timings")
    slider = page.evaluate(TIMED_STEP, ["#threshold", 0.3])
    t = time.perf_counter()
    page.click("#node-layer g.node >> nth=3")
    page.wait_for_selector("#panel .node-label")
    click = time.perf_counter() - t
    everything = [page.evaluate(TIMED_STEP, [control, 0])
                  for control in ("#per-layer", "#topk", "#threshold")]
    assert opened.counts() == (5000, 50_000)
    slider_all = page.evaluate(TIMED_STEP, ["#threshold", 0.02])
    opened.shot("scale-5000-nodes")
    result = {"page_MB": round(page_file.stat().st_size / 2**20, 1),
              "ready_ms_since_navigation": round(timings["ready"]),
              "wall_open_s": round(wall, 2), "slider_ms": round(slider),
              "click_panel_ms": round(click * 1000),
              "show_all_5000_nodes_50000_edges_ms": [round(x) for x in everything],
              "slider_with_all_nodes_ms": round(slider_all)}
    print("explorer scale:", json.dumps(result))
    assert timings["ready"] < 4000 and slider < 1000
    clean(opened)
