// Edges are drawn on a canvas under the SVG nodes (tens of thousands stay fast). Width and
// opacity grow with |weight| relative to the strongest edge of the same layer pair; colour
// is the sign (red positive, blue negative; in a diff, the sign of the change). Edges are
// batched into a few styles so each style is one path and one stroke.

const WIDTH_STEPS = 6;
const FADED = 0;
const NORMAL = 1;
const STRONG = 2;

/** Line width (screen pixels) and opacity of an edge of relative strength `norm`. */
function edgeStyle(norm, emphasis) {
  const step = Math.min(WIDTH_STEPS - 1, Math.floor(norm * WIDTH_STEPS));
  const width = 0.6 + step * 1.1;
  const alpha = emphasis === FADED ? 0.06 : emphasis === STRONG ? 0.95 : 0.22 + 0.11 * step;
  return { step, width: emphasis === STRONG ? width + 0.8 : width, alpha };
}

/** The two end points of `link` in drawing coordinates, or null when an end is not drawn. */
function edgeEnds(link, pos) {
  const a = pos.get(link.source);
  const b = pos.get(link.target);
  if (!a || !b) return null;
  return [a.x + a.w, a.y + a.h / 2, b.x, b.y + b.h / 2];
}

function traceCurve(ctx, x1, y1, x2, y2) {
  const mid = (x1 + x2) / 2;
  ctx.moveTo(x1, y1);
  ctx.bezierCurveTo(mid, y1, mid, y2, x2, y2);
}

/** Draw `links` on `ctx` for the pan/zoom `t` ({x, y, k}), `emphasisOf(link)` giving
 *  FADED, NORMAL or STRONG; `routes` (lists of nodes) are drawn over them. */
function drawEdges(ctx, size, t, links, pos, emphasisOf, routes, activeRoute) {
  const dpr = window.devicePixelRatio || 1;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.clearRect(0, 0, ctx.canvas.width, ctx.canvas.height);
  ctx.setTransform(dpr * t.k, 0, 0, dpr * t.k, dpr * t.x, dpr * t.y);
  const top = -t.y / t.k;
  const bottom = (size.height - t.y) / t.k;
  const buckets = new Map();
  for (const l of links) {
    const e = edgeEnds(l, pos);
    if (!e || (e[1] < top && e[3] < top) || (e[1] > bottom && e[3] > bottom)) continue;
    const emphasis = emphasisOf(l);
    const key = `${emphasis}|${l.weight >= 0 ? 1 : 0}|${edgeStyle(l.norm, emphasis).step}`;
    if (!buckets.has(key)) buckets.set(key, { link: l, emphasis, ends: [] });
    buckets.get(key).ends.push(e);
  }
  // faded first, strong last, so emphasised edges are on top
  const order = [...buckets.values()].sort((a, b) => a.emphasis - b.emphasis);
  for (const b of order) {
    const style = edgeStyle(b.link.norm, b.emphasis);
    ctx.strokeStyle = edgeColor(b.link.weight);
    ctx.globalAlpha = style.alpha;
    ctx.lineWidth = style.width / t.k;
    ctx.beginPath();
    for (const e of b.ends) traceCurve(ctx, ...e);
    ctx.stroke();
  }
  for (const route of routes) drawRoute(ctx, route, pos, t, route.index === activeRoute);
  ctx.globalAlpha = 1;
}

/** One route: a dark outline with the edge colours inside, thicker when active. */
function drawRoute(ctx, route, pos, t, active) {
  for (let i = 0; i + 1 < route.nodes.length; i++) {
    const e = edgeEnds({ source: route.nodes[i], target: route.nodes[i + 1] }, pos);
    if (!e) continue;
    const weight = route.weights[i] === undefined ? 1 : route.weights[i];
    for (const [color, width, alpha] of [
      [COLORS.route, active ? 8 : 5.5, active ? 0.9 : 0.55],
      [edgeColor(weight), active ? 4 : 2.5, 1],
    ]) {
      ctx.globalAlpha = alpha;
      ctx.strokeStyle = color;
      ctx.lineWidth = width / t.k;
      ctx.beginPath();
      traceCurve(ctx, ...e);
      ctx.stroke();
    }
  }
}

/** SVG path elements of the same drawing (for the SVG and PNG export), in drawing units. */
function edgeSvg(links, pos, emphasisOf, routes, activeRoute) {
  const group = svgEl("g", { class: "edges", fill: "none" });
  const curve = (e) => {
    const mid = (e[0] + e[2]) / 2;
    const r = (v) => Math.round(v * 10) / 10;
    return `M${r(e[0])},${r(e[1])}C${r(mid)},${r(e[1])} ${r(mid)},${r(e[3])} ${r(e[2])},${r(e[3])}`;
  };
  const sorted = [...links].sort((a, b) => emphasisOf(a) - emphasisOf(b));
  for (const l of sorted) {
    const e = edgeEnds(l, pos);
    if (!e) continue;
    const style = edgeStyle(l.norm, emphasisOf(l));
    group.append(svgEl("path", { d: curve(e), stroke: edgeColor(l.weight),
      "stroke-width": style.width, "stroke-opacity": style.alpha.toFixed(2) }));
  }
  for (const route of routes) {
    const active = route.index === activeRoute;
    for (let i = 0; i + 1 < route.nodes.length; i++) {
      const e = edgeEnds({ source: route.nodes[i], target: route.nodes[i + 1] }, pos);
      if (!e) continue;
      const weight = route.weights[i] === undefined ? 1 : route.weights[i];
      group.append(svgEl("path", { d: curve(e), stroke: COLORS.route,
        "stroke-width": active ? 8 : 5.5, "stroke-opacity": active ? 0.9 : 0.55 }));
      group.append(svgEl("path", { d: curve(e), stroke: edgeColor(weight),
        "stroke-width": active ? 4 : 2.5 }));
    }
  }
  return group;
}
