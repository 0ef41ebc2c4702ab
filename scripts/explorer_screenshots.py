"""The README's screenshots of the explorer (`ierf graph show`), taken in headless Chromium.

Each view is opened from its URL fragment (the page's shareable state: class, selection,
supernodes), so a screenshot is also an example of a link to a view. PNGs are quantised to
256 colours to stay small.

    python scripts/explorer_screenshots.py docs/images --toy GRAPH [--lite0 GRAPH]
        [--attack DIAGNOSE_DIR]

GRAPH: a folder of `ierf graph build` (the README's toy-resnet graph of the synthetic
benchmark; EfficientNet-Lite0 on the bundled photos as in scripts/diagnose_examples.sh);
DIAGNOSE_DIR: an `ierf diagnose --attack` folder (graph-clean.json, graph-attacked.json; shown
with the thumbnails of the --lite0 graph, built on the same bases).
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from PIL import Image

from ierf.explorer import export_html

VIEWPORT = {"width": 1360, "height": 780}


def focus(graph: Path) -> dict[str, str]:
    """A view of ``graph``: the most probable class's ancestry and the concept of the last
    layer most important for it, selected."""
    doc = json.loads((graph / "graph.json" if graph.is_dir() else graph).read_text())
    classes = [n for n in doc["nodes"] if n["kind"] == "class"]
    cls = max(classes, key=lambda n: n.get("token_prob") or 0)
    column = doc["metadata"]["ierf"]["classes"].index(cls["feature"])
    last = max(int(n["layer"]) for n in doc["nodes"] if n["kind"] == "concept")
    concepts = [n for n in doc["nodes"] if n["kind"] == "concept" and int(n["layer"]) == last]
    top = max(concepts, key=lambda n: abs(n["importance"][column]))
    return {"c": cls["node_id"], "sel": top["node_id"]}


def with_thumbnails(graph: Path, source: Path, out: Path) -> Path:
    """A copy of ``graph`` (per-image, as `ierf diagnose` writes it: no thumbnails) with the
    thumbnails of the same nodes in ``source`` (the data-set graph of the same bases)."""
    doc = json.loads(graph.read_text())
    found = {n["node_id"]: [str((source / t).resolve()) for t in n["thumbnails"]]
             for n in json.loads((source / "graph.json").read_text())["nodes"]
             if n.get("thumbnails")}
    for node in doc["nodes"]:
        node.setdefault("thumbnails", found.get(node["node_id"], []))
    out.write_text(json.dumps(doc))
    return out


def shoot(browser: Any, page_file: Path, fragment: dict[str, str], out: Path,
          action: str = "() => window.ierfExplorer.fit()") -> None:
    page = browser.new_page(viewport=VIEWPORT)
    problems: list[str] = []
    page.on("pageerror", lambda e: problems.append(str(e)))
    page.on("console", lambda m: m.type == "error" and problems.append(m.text))
    page.goto(page_file.as_uri() + "#" + urlencode(fragment))
    page.wait_for_function("() => document.body.dataset.state === 'ready'")
    page.evaluate(action)
    page.evaluate("() => document.querySelectorAll('#notices .notice').forEach(n => n.remove())")
    page.wait_for_timeout(300)
    raw = out.with_suffix(".raw.png")
    page.screenshot(path=str(raw))
    page.close()
    if problems:
        raise RuntimeError(f"{page_file.name}: {problems[0]}")
    Image.open(raw).convert("RGB").quantize(256, dither=Image.Dither.NONE).save(
        out, optimize=True)
    raw.unlink()
    print(f"→ {out} ({out.stat().st_size // 1024} KB)")


#: collapse the first concept layer one level, then select its largest supernode
COLLAPSE = """() => {
    const app = window.ierfExplorer;
    const layer = app.model.columns.find((c) => app.hierarchy.has(c.name)).name;
    app.collapseLayer(layer, false);
    const supers = app.model.nodes.filter((n) => n.raw.supernode);
    const big = supers.reduce((a, b) => b.raw.supernode.members.length >
      a.raw.supernode.members.length ? b : a);
    app.select(big.id);
    app.fit();
}"""


def main(argv: list[str] | None = None) -> None:
    from playwright.sync_api import sync_playwright

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out", type=Path, help="folder of the PNGs (docs/images)")
    ap.add_argument("--toy", type=Path, required=True, help="toy-resnet graph folder")
    ap.add_argument("--lite0", type=Path, help="EfficientNet-Lite0 photo graph folder")
    ap.add_argument("--attack", type=Path, help="`ierf diagnose --attack` output folder")
    ap.add_argument("--chromium", default=shutil.which("chromium") or "chromium")
    args = ap.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        tmp = Path(tmp)
        browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
        toy = export_html(args.toy, tmp / "toy.html", routes=False).path
        shoot(browser, toy, focus(args.toy), args.out / "explorer-toy-resnet.png")
        shoot(browser, toy, {}, args.out / "explorer-supernodes.png", COLLAPSE)
        if args.lite0:
            lite0 = export_html(args.lite0, tmp / "lite0.html", routes=False).path
            shoot(browser, lite0, focus(args.lite0), args.out / "explorer-lite0.png")
        if args.attack:
            clean, attacked = (args.attack / f"graph-{n}.json" for n in ("clean", "attacked"))
            if args.lite0:
                clean = with_thumbnails(clean, args.lite0, tmp / "graph-clean.json")
                attacked = with_thumbnails(attacked, args.lite0, tmp / "graph-attacked.json")
            diff = export_html(clean, tmp / "diff.html", diff=attacked,
                               names=("clean", "attacked")).path
            view = focus(args.attack / "graph-attacked.json")
            shoot(browser, diff, {"sel": view["sel"]}, args.out / "explorer-diff.png")
        browser.close()


if __name__ == "__main__":
    main()
