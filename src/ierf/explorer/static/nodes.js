// Nodes are SVG groups (a box, the thumbnail or a placeholder, the label and one line of
// numbers) inside the pan/zoom group, with column headers above them. Their look for each
// state (selected, pinned, dimmed, ...) is CSS classes (svg.css). A large view keeps SVG
// groups only for the nodes in and around the window; when even those are too many (zoomed
// far out), nodes are drawn as boxes on the edge canvas instead (see drawNodeBoxes).

const SVG_ALL = 600; // up to this many drawn nodes, every one is an SVG group
const SVG_CAP = 700; // beyond it, the nodes near the window, if at most this many
const MARK_NAMES = ["selected", "hovered", "pinned", "match", "route", "ancestor", "dim"];

/** The one-line summary of a node under its label. */
function nodeLine(n) {
  const r = n.raw;
  if (r.supernode) return `${r.supernode.members.length} concepts · infl ${fmt(n.influence)}`;
  if (n.kind === "class") return `class ${r.feature} · p ${fmt(r.token_prob)}`;
  if (n.kind === "error") return `residual ${fmt(r.error_share)} · infl ${fmt(n.influence)}`;
  return `#${r.feature} · f ${fmt(r.frequency)} · infl ${fmt(n.influence)}`;
}

/** What a node without a thumbnail shows in its place. */
function placeholderText(n) {
  if (n.raw.supernode) return `Σ${n.raw.supernode.members.length}`;
  return n.kind === "class" ? "C" : n.kind === "error" ? "ε" : `#${n.raw.feature}`;
}

/** The classes a node always has: its kind, "super" for a supernode, "only-a" / "only-b"
 *  for a node of one of the two graphs of a diff. */
function nodeClasses(n) {
  return ["node", `kind-${n.kind}`, n.raw.supernode ? "super" : "",
    n.raw.diff_only === "a" || n.raw.diff_only === "b" ? `only-${n.raw.diff_only}` : ""]
    .filter(Boolean);
}

/** The SVG group of node `n` at `p` in node style `s`, with the state classes of `marks`. */
function nodeElement(n, p, s, marks) {
  const names = MARK_NAMES.filter((m) => marks[m] && marks[m].has(n));
  const g = svgEl("g", { class: [...nodeClasses(n), ...names].join(" "), "data-id": n.id,
    transform: `translate(${p.x},${p.y})` });
  if (n.raw.supernode) { // a stack of cards
    g.append(svgEl("rect", { class: "stack", x: 4, y: -4, width: p.w, height: p.h, rx: s.thumb ? 4 : 2 }));
  }
  g.append(svgEl("rect", { class: "box", width: p.w, height: p.h, rx: s.thumb ? 4 : 2 }));
  let textX = 5;
  if (s.thumb) {
    const t = s.thumb;
    if (n.images.length) {
      g.append(svgEl("image", { class: "thumb", href: n.images[0], x: 2, y: 2, width: t,
        height: t, preserveAspectRatio: "xMidYMid slice" }));
    } else {
      g.append(svgEl("rect", { class: "placeholder", x: 2, y: 2, width: t, height: t, rx: 3 }));
      const ph = svgEl("text", { class: "placeholder-text", x: 2 + t / 2, y: 2 + t / 2 + 4 });
      ph.textContent = truncate(placeholderText(n), 5);
      g.append(ph);
    }
    textX = t + 8;
  }
  const label = svgEl("text", { class: "label", x: textX, y: s.thumb ? 18 : s.h - 3,
    "font-size": s.font });
  label.textContent = truncate(n.label, s.chars - (s.thumb ? 6 : 0));
  g.append(label);
  if (s.thumb) {
    const line = svgEl("text", { class: "line", x: textX, y: 34 });
    line.textContent = truncate(nodeLine(n), 30);
    g.append(line);
  }
  g.append(svgEl("circle", { class: "pin-mark", cx: p.w - 6, cy: 6, r: s.thumb ? 4 : 3 }));
  return g;
}

/** The column headers of `geometry` (SVG text). */
function headerElements(geometry) {
  const out = [];
  for (const h of geometry.headers) {
    const text = svgEl("text", { class: "column-title", x: h.x, y: -30 });
    text.textContent = h.name;
    const count = svgEl("text", { class: "column-count", x: h.x, y: -14 });
    count.textContent = h.count === h.of ? `${h.count} nodes` : `${h.count} of ${h.of} nodes`;
    out.push(text, count);
  }
  return out;
}

/** The SVG groups of the drawn nodes that are in the DOM. */
class NodeLayer {
  constructor(layer, headerLayer) {
    this.layer = layer;
    this.headerLayer = headerLayer;
    this.elements = new Map();
  }

  /** A new drawing: new headers, no node groups yet. */
  reset(geometry) {
    this.geometry = geometry;
    this.layer.replaceChildren();
    this.headerLayer.replaceChildren(...headerElements(geometry));
    this.elements = new Map();
  }

  /** Keep exactly the groups of `nodes` in the DOM. */
  show(nodes, marks) {
    const wanted = new Set(nodes);
    for (const [n, g] of this.elements) {
      if (!wanted.has(n)) {
        g.remove();
        this.elements.delete(n);
      }
    }
    const fragment = document.createDocumentFragment();
    for (const n of nodes) {
      if (this.elements.has(n)) continue;
      const g = nodeElement(n, this.geometry.pos.get(n), this.geometry.style, marks);
      this.elements.set(n, g);
      fragment.append(g);
    }
    this.layer.append(fragment);
  }

  /** Set the state classes of the groups in the DOM from `marks` (name → Set or null). */
  mark(marks) {
    for (const [n, g] of this.elements) {
      for (const name of MARK_NAMES) g.classList.toggle(name, Boolean(marks[name] && marks[name].has(n)));
    }
  }
}

const BOX_FILL = { concept: "#ffffff", error: "#f4f4f4", class: "#fff6da" };
const BOX_STROKE = { concept: "#8c8c8c", error: "#8c8c8c", class: "#b08900" };

/** A node's own look as a canvas box, as svg.css draws its SVG group: diff sides dashed
 *  grey (only in A) or green (only in B), supernodes purple, error nodes dashed; `dash`
 *  and `width` in screen pixels. */
function boxStyle(n) {
  const only = n.raw.diff_only;
  if (only === "a") return { fill: "#f8f9fa", stroke: "#868e96", width: 2, dash: [5, 3] };
  if (only === "b") return { fill: "#ebfbee", stroke: "#2b8a3e", width: 2, dash: [5, 3] };
  if (n.raw.supernode) return { fill: BOX_FILL[n.kind], stroke: "#5f3dc4", width: 1.8, dash: [] };
  return { fill: BOX_FILL[n.kind], stroke: BOX_STROKE[n.kind], width: 1,
    dash: n.kind === "error" ? [4, 3] : [] };
}

/** Nodes as plain boxes on the canvas (a view too large for SVG groups); the context
 *  already has the pan/zoom transform. A supernode keeps its stack of cards, 3 px behind. */
function drawNodeBoxes(ctx, nodes, pos, marks, t) {
  const has = (name, n) => Boolean(marks[name] && marks[name].has(n));
  const px = 1 / t.k;                                       // one screen pixel
  for (const n of nodes) {
    const p = pos.get(n);
    const b = boxStyle(n);
    ctx.globalAlpha = has("dim", n) ? 0.25 : 1;
    ctx.setLineDash(b.dash.map((d) => d * px));
    if (n.raw.supernode) {
      ctx.fillStyle = "#f1f3f5";
      ctx.strokeStyle = "#8c8c8c";
      ctx.lineWidth = px;
      ctx.fillRect(p.x + 3 * px, p.y - 3 * px, p.w, p.h);
      ctx.strokeRect(p.x + 3 * px, p.y - 3 * px, p.w, p.h);
    }
    ctx.fillStyle = has("match", n) ? "#ffe066" : has("selected", n) ? "#d0e4ff" : b.fill;
    ctx.fillRect(p.x, p.y, p.w, p.h);
    ctx.strokeStyle = has("selected", n) ? "#1c5fa8" : has("pinned", n) ? "#7048e8"
      : has("route", n) ? "#111111" : has("ancestor", n) ? "#b08900" : b.stroke;
    ctx.lineWidth = (has("selected", n) || has("pinned", n) ? 2.5 : b.width) * px;
    ctx.strokeRect(p.x, p.y, p.w, p.h);
  }
  ctx.setLineDash([]);
  ctx.globalAlpha = 1;
}
