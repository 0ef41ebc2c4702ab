"""The concept and CAFE latent dashboards in a real browser (issue 13 item 3): Debian's
Chromium driven headless by Playwright through its executable path. Skipped only when
Chromium or Playwright is absent; .ci/run installs Chromium.

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
import torch
from browser import VIEWPORT, launch, shot
from test_explorer_dashboards import (  # noqa: F401  (module fixtures)
    SCRIPT_CLOSE,
    XSS,
    atlas_dir,
    grounding,
    page_data,
)

from ierf.explorer import export_concepts, export_latents, render_dashboard
from ierf.explorer.dashboard_images import ImageTable
from ierf.explorer.dashboard_page import payload

INJECTED = "document.querySelectorAll('img[src=\"x\"], [onerror]').length"
BIG = 5000


@dataclass
class Opened:
    """A page and what went wrong in it (console errors, exceptions, foreign requests)."""

    page: Any
    problems: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    load_s: float = 0.0

    def data(self, key: str) -> str:
        return self.page.evaluate(f"document.body.dataset[{key!r}]")

    def cards(self) -> list[int]:
        return [int(i) for i in self.page.eval_on_selector_all(
            "#grid-spacer .card", "els => els.map(e => e.dataset.item)")]

    def wait_images(self, css: str) -> int:
        """Wait until every image under ``css`` has loaded; their number."""
        self.page.wait_for_function(
            "css => [...document.querySelectorAll(css)].every(i => i.complete && "
            "i.naturalWidth > 0)", arg=css)
        return self.page.eval_on_selector_all(css, "els => els.length")

    def shot(self, name: str) -> None:
        shot(self.page, f"dash-{name}")


def clean(opened: Opened) -> None:
    assert opened.problems == []
    assert [u for u in opened.requests if not u.startswith(("file:", "data:", "blob:"))] == []


def big_payload(n: int = BIG, k: int = 10, pictures: int = 400) -> dict[str, Any]:
    """A concept dashboard of ``n`` concepts (K = 8·C scale) with ``k`` nearest PFVs each over
    ``pictures`` distinct 48 × 48 PNGs."""
    g = torch.Generator().manual_seed(0)
    table = ImageTable()
    urls = table.add(torch.rand(pictures, 3, 6, 6, generator=g).repeat_interleave(8, -1)
                     .repeat_interleave(8, -2))
    top = torch.randint(0, pictures, (n, k), generator=g).tolist()
    freq = torch.rand(n, generator=g).tolist()
    items = [{"k": j, "label": f"concept {j}", "frequency": freq[j], "activation": freq[j] / 2,
              "top": top[j], "coef": [0.5] * k, "importance": [[j % 7, 0.3], [(j + 1) % 7, 0.1]],
              "node": None} for j in range(n)]
    samples = [{"picture": u, "image": f"img{i}.png", "row": i % 8, "col": i // 8 % 8}
               for i, u in enumerate(urls)]
    s = {"id": "big", "model": "synthetic", "layer": "blocks.9", "method": "TopKSAE",
         "tokens": "patch", "n_concepts": n, "n_channels": n // 8, "n_pfvs": 10 * n,
         "atlas": "none", "grid": [8, 8], "nearest_by": "cosine",
         "classes": [f"class {c}" for c in range(7)], "importance_kind": "share",
         "graph": None, "samples": samples, "items": items}
    return payload("concepts", [s], table.urls, "5000 concepts")


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory, atlas_dir, grounding  # noqa: F811
          ) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("dash-pages")
    layer3 = atlas_dir / "concepts" / "layer3-kmeans"
    graph = atlas_dir / "graph"
    out = {"concepts": export_concepts(layer3, root / "concepts.html", graph=graph, k=4).path,
           "atlas": export_concepts(atlas_dir, root / "atlas.html", graph=graph, k=3).path,
           "folder": export_concepts(layer3, root / "site" / "folder.html", k=3,
                                     images="folder").path}
    for kind in ("patch", "cls"):
        out[kind] = export_latents(grounding[kind], root / f"{kind}.html",
                                   basis=grounding[f"basis-{kind}"], images="benchmark", n=4,
                                   steps=4).path
    data = page_data(out["concepts"])
    for name, version in (("newer", 99), ("older", 0)):
        bad = json.loads(json.dumps(data))
        bad["dashboard"]["version"] = version
        out[name] = root / f"{name}.html"
        out[name].write_text(render_dashboard(bad, name))
    out["empty"] = root / "empty.html"
    out["empty"].write_text(render_dashboard(payload("concepts", [], [], "empty"), "empty"))
    out["broken"] = root / "broken.html"
    out["broken"].write_text(out["concepts"].read_text().replace(
        'type="application/json">{', 'type="application/json">{oops', 1))
    out["big"] = root / "big.html"
    out["big"].write_text(render_dashboard(big_payload(), "big"))
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch()


@pytest.fixture
def open_page(browser: Any) -> Iterator[Callable[..., Opened]]:
    contexts = []

    def opener(path: Path, fragment: str = "", offline: bool = False) -> Opened:
        context = browser.new_context(viewport=VIEWPORT, offline=offline)
        if offline:
            context.route(re.compile(r"^(https?|wss?|ftp)://"), lambda route: route.abort())
        contexts.append(context)
        page = context.new_page()
        opened = Opened(page)
        page.on("console", lambda m: m.type == "error" and opened.problems.append(m.text))
        page.on("pageerror", lambda e: opened.problems.append(f"uncaught: {e}"))
        page.on("dialog", lambda d: (opened.problems.append(f"dialog: {d.message}"),
                                     d.dismiss()))
        page.on("request", lambda r: opened.requests.append(r.url))
        start = time.perf_counter()
        page.goto(path.as_uri() + fragment)
        page.wait_for_function("document.body.dataset.state")
        opened.load_s = time.perf_counter() - start
        return opened

    yield opener
    for c in contexts:
        c.close()


# -- concepts ----------------------------------------------------------------------------------


def test_concept_grid_and_panel(open_page, pages) -> None:
    opened = open_page(pages["concepts"])
    page = opened.page
    assert opened.data("state") == "ready" and opened.data("kind") == "concepts"
    (s,) = page_data(pages["concepts"])["sets"]
    assert int(opened.data("items")) == len(s["items"]) == 6
    assert sorted(opened.cards()) == list(range(6))
    opened.wait_images("#grid .card img")
    opened.shot("concept-grid")
    page.click('#grid .card[data-item="2"]')
    assert page.text_content("#panel .item-label") == XSS     # text, not markup
    assert page.evaluate(INJECTED) == 0
    assert opened.wait_images("#panel .pfvs img") == 4
    assert page.eval_on_selector_all("#panel .token-box", "els => els.length") == 4
    bars = page.eval_on_selector_all("#panel ul.bars .bar-label", "els => els.map(e => "
                                     "e.textContent)")
    assert bars == [s["classes"][c] for c, _ in s["items"][2]["importance"]]
    assert XSS in bars                                       # a class name, as text
    edges = page.eval_on_selector_all("#panel ul.edges li", "els => els.length")
    item = s["items"][2]
    assert edges == len(item["in"]) + len(item["out"]) > 0
    chain = page.eval_on_selector_all("#panel ol.chain li", "els => els.map(e => e.textContent)")
    assert chain == ["layer2", "layer3", "output"]           # where it sits in the graph
    assert page.text_content("#panel ol.chain li.here") == "layer3"
    assert "sel=2" in page.url
    opened.shot("concept-panel")
    page.click('#grid .card[data-item="5"]')
    assert page.text_content("#panel .item-label") == SCRIPT_CLOSE
    page.keyboard.press("Escape")
    assert "sel=" not in page.url and page.text_content("#panel h2") == s["id"]
    clean(opened)


def test_search_filter_and_url_state(open_page, pages) -> None:
    (s,) = page_data(pages["concepts"])["sets"]
    opened = open_page(pages["concepts"])
    page = opened.page
    page.fill("#search", "onerror")
    assert opened.cards() == [2] and opened.data("items") == "1"
    page.fill("#search", "no such concept")
    assert opened.cards() == [] and "nothing matches" in page.text_content("#status")
    page.fill("#search", "")
    page.select_option("#filter", "0")                       # class "cat"
    having = [i for i in s["items"] if any(c == 0 for c, _ in i["importance"])]
    by_value = sorted(having, key=lambda i: -dict(map(tuple, i["importance"]))[0])
    assert opened.cards() == [i["k"] for i in by_value]
    page.select_option("#filter", "")
    page.select_option("#sort", "k")
    assert opened.cards() == list(range(6))
    again = open_page(pages["concepts"], "#sort=k&q=concept&sel=3")
    assert again.page.input_value("#search") == "concept"
    assert again.page.text_content("#panel .item-label") == "concept 3"
    assert again.page.eval_on_selector("#grid .card.selected", "e => e.dataset.item") == "3"
    clean(opened)
    clean(again)


def test_a_graph_edge_opens_the_concept_of_another_basis(open_page, pages) -> None:
    opened = open_page(pages["atlas"], "#set=1&sel=0")
    page = opened.page
    assert page.is_visible("#set-select") and page.input_value("#set-select") == "1"
    link = page.wait_for_selector("#panel ul.edges li.link")
    node = link.get_attribute("data-node")                    # a layer2 node: set 0
    link.click()
    assert page.input_value("#set-select") == "0"
    assert page.text_content("#panel .item-label") == f"layer2 #{node.split(':')[1]}"
    opened.shot("atlas-two-bases")
    clean(opened)


def test_works_with_the_network_disabled(open_page, pages) -> None:
    for name in ("concepts", "folder", "patch"):
        opened = open_page(pages[name], offline=True)
        assert opened.data("state") == "ready"
        opened.page.click("#grid .card >> nth=0")
        assert opened.wait_images("#panel img") >= 2
        clean(opened)
        if name == "folder":
            assert any("folder_files/" in u for u in opened.requests)


def test_bad_data_shows_a_message_not_a_blank_page(open_page, pages) -> None:
    expected = {"newer": "newer than this page reads", "older": "write it again with this ierf",
                "empty": "This dashboard is empty", "broken": "data is damaged"}
    for name, message in expected.items():
        opened = open_page(pages[name])
        assert opened.data("state") == "error"
        assert message in opened.page.text_content("#grid")
        opened.shot(f"error-{name}")
        assert [p for p in opened.problems if "uncaught" in p] == []


def test_class_filter_finds_concepts_beyond_their_top_classes(open_page, tmp_path) -> None:
    """A concept lists only its top classes; the set's per-class index (``by_class``) lets
    the filter find it for a class outside them, ranked by its importance for that class."""
    data = big_payload(n=4, k=2, pictures=4)         # concept j: classes j % 7, (j + 1) % 7
    (s,) = data["sets"]
    s["by_class"] = {"6": [[1, 0.4], [3, 0.2]], "0": [[0, 0.3]]}
    page_file = tmp_path / "filter.html"
    page_file.write_text(render_dashboard(data, "filter"))
    opened = open_page(page_file)
    opened.page.select_option("#filter", "6")        # in no concept's own list
    assert opened.cards() == [1, 3]
    opened.page.select_option("#filter", "2")        # concepts 1 (0.1) and 2 (0.3)
    assert opened.cards() == [2, 1]
    clean(opened)


def test_five_thousand_concepts_stay_fast(open_page, pages) -> None:
    opened = open_page(pages["big"])
    page = opened.page
    assert opened.data("items") == str(BIG)
    shown = len(opened.cards())
    assert 0 < shown < 100                                   # virtualised: rows in view only
    freq = [i["frequency"] for i in big_payload()["sets"][0]["items"]]
    last = min(range(BIG), key=lambda j: (freq[j], -j))      # sorted by frequency, descending
    start = time.perf_counter()
    page.eval_on_selector("#grid", "g => { g.scrollTop = g.scrollHeight; }")
    page.wait_for_selector(f'#grid .card[data-item="{last}"]')
    scroll_s = time.perf_counter() - start
    assert len(opened.cards()) < 100
    start = time.perf_counter()
    page.fill("#search", "concept 49")                       # 49, 490-499, 4900-4999
    assert opened.data("items") == str(1 + 10 + 100)
    search_s = time.perf_counter() - start
    page.click("#grid .card >> nth=0")
    assert opened.wait_images("#panel .pfvs img") == 10
    print(f"\n{BIG} concepts: ready in {opened.load_s:.2f} s, scroll {scroll_s:.3f} s, "
          f"search {search_s:.3f} s, {shown} cards in the DOM")
    opened.shot("big")
    clean(opened)


# -- latents -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["patch", "cls"])
def test_latent_dashboard(open_page, pages, kind) -> None:
    opened = open_page(pages[kind])
    page = opened.page
    (s,) = page_data(pages[kind])["sets"]
    assert opened.data("kind") == "latents" and int(opened.data("items")) == len(s["items"])
    n_cls = len(s["items"]) if kind == "cls" else 0
    assert f"{len(s['items'])} ({n_cls} CLS)" in page.text_content("#panel dl.facts")
    badges = page.eval_on_selector_all("#grid .card .badge", "els => els.length")
    assert badges == (len(s["items"]) if kind == "cls" else 0)
    opened.wait_images("#grid .card img")
    opened.shot(f"latents-{kind}")
    page.click("#grid .card >> nth=0")
    label = page.text_content("#panel .item-label")
    item = next(i for i in s["items"] if label.startswith(i["label"]))
    pairs = len(item["pairs"])
    assert opened.wait_images("#panel .pair-row img") == 2 * pairs
    boxes = page.eval_on_selector_all("#panel .pair-row .token-box", "els => els.length")
    assert boxes == (0 if kind == "cls" else pairs)          # a CLS latent has no patch
    curves = page.eval_on_selector_all("#panel svg.chart polyline", "els => els.length")
    assert curves == (2 if kind == "cls" else 3)             # no activation ranking for CLS
    assert opened.wait_images("#panel img.panel-png") == 1
    opened.shot(f"latent-panel-{kind}")
    page.select_option("#filter", "cls")
    assert int(opened.data("items")) == (len(s["items"]) if kind == "cls" else 0)
    clean(opened)
