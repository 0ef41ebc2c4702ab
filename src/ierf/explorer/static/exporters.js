// Downloads: the current view as SVG or PNG (the drawn nodes and edges, with their
// highlighting), and the pinned subgraph as JSON in the graph's own format.

const MARGIN = 48;
const PNG_MAX_SIDE = 16000;
const PNG_MAX_PIXELS = 1.2e8;

/** The current view as a standalone SVG document (a string), and its size. */
function viewSvg(app) {
  const g = app.geometry;
  const width = Math.ceil(g.width + 2 * MARGIN);
  const height = Math.ceil(g.height + 2 * MARGIN + 40);
  const root = svgEl("svg", { xmlns: SVG_NS, width, height,
    viewBox: `${-MARGIN} ${-MARGIN - 40} ${width} ${height}` });
  const style = svgEl("style", {});
  style.textContent = document.getElementById("svg-style").textContent;
  root.append(style, svgEl("rect", { x: -MARGIN, y: -MARGIN - 40, width, height, fill: "#ffffff" }));
  root.append(edgeSvg(app.view.links, g.pos, app.emphasisOf, app.shownRoutes(), app.activeRoute));
  root.append(svgEl("g", { class: "columns" }));
  root.lastChild.append(...headerElements(g));
  const nodes = svgEl("g", { class: "nodes" });
  for (const n of app.view.nodes) nodes.append(nodeElement(n, g.pos.get(n), g.style, app.marks));
  root.append(nodes);
  return { text: new XMLSerializer().serializeToString(root), width, height };
}

function exportSvg(app) {
  download(`${app.stem}.svg`, new Blob([viewSvg(app).text], { type: "image/svg+xml" }));
}

/** The current view as PNG: the SVG drawn onto a canvas (thumbnails kept when embedded). */
function exportPng(app) {
  const svg = viewSvg(app);
  const scale = Math.min(2, PNG_MAX_SIDE / Math.max(svg.width, svg.height),
    Math.sqrt(PNG_MAX_PIXELS / (svg.width * svg.height)));
  const url = URL.createObjectURL(new Blob([svg.text], { type: "image/svg+xml" }));
  const img = new Image();
  if (app.model.nodes.some((n) => n.images.some((u) => !u.startsWith("data:")))) {
    app.notify("The PNG leaves out thumbnails kept in a folder beside the page (a browser " +
      "does not draw those into an image); the SVG keeps links to them.", "info");
  }
  img.onload = () => {
    const canvas = el("canvas", { width: Math.round(svg.width * scale),
      height: Math.round(svg.height * scale) });
    const ctx = canvas.getContext("2d");
    ctx.scale(scale, scale);
    ctx.drawImage(img, 0, 0);
    URL.revokeObjectURL(url);
    try {
      canvas.toBlob((blob) => {
        if (blob) download(`${app.stem}.png`, blob);
        else app.notify("The view is too large to export as PNG; export it as SVG.", "warn");
      }, "image/png");
    } catch (e) {
      app.notify(`PNG export failed (${e.message}); export the view as SVG instead.`, "warn");
    }
  };
  img.onerror = () => {
    URL.revokeObjectURL(url);
    app.notify("PNG export failed: the browser could not draw the view; export it as SVG.", "warn");
  };
  img.src = url;
}

/** The pinned nodes and the edges between them, as a graph document of the same format
 *  (metadata and qParams copied, qParams.pinnedIds set). */
function pinnedGraph(app) {
  const m = app.model;
  const pinned = new Set(app.state.pins);
  const meta = JSON.parse(JSON.stringify(m.meta));
  meta.ierf = { ...meta.ierf, subgraph: { of: meta.slug || null, pinned: [...pinned] } };
  return {
    metadata: meta,
    qParams: { ...(m.graph.qParams || {}), pinnedIds: [...pinned] },
    nodes: m.nodes.filter((n) => pinned.has(n.id)).map((n) => n.raw),
    links: m.links.filter((l) => pinned.has(l.source.id) && pinned.has(l.target.id))
      .map((l) => ({ source: l.source.id, target: l.target.id, weight: l.weight })),
  };
}

function exportPinned(app) {
  const text = JSON.stringify(pinnedGraph(app), null, 1);
  download(`${app.stem}-pinned.json`, new Blob([text], { type: "application/json" }));
}
