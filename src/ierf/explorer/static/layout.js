// Where each drawn node goes: one column per layer (input side left, classes right). The
// classes keep their order; each concept column is ordered, right to left, by the weighted
// mean position of its children (fewer crossing edges), error nodes last. The layout uses
// every edge between drawn nodes, so moving the threshold or top-k does not move nodes.
// Columns are centred, except in a compact drawing (hundreds of nodes a column): top first.

const CARD = { w: 200, h: 44, row: 52, thumb: 40, gap: 170, font: 12, chars: 24 };
const COMPACT = { w: 150, h: 12, row: 14, thumb: 0, gap: 150, font: 9, chars: 26 };
const COMPACT_ABOVE = 300; // nodes in the largest column beyond which nodes lose thumbnails

/** Positions `{x, y, w, h}` of `view.nodes`, the size `{width, height}` of the drawing,
 *  column headers and the node style used (CARD or COMPACT). */
function layout(model, view) {
  const cols = model.columns.map(() => []);
  for (const n of view.nodes) cols[n.col].push(n);
  const largest = Math.max(1, ...cols.map((c) => c.length));
  const style = largest > COMPACT_ABOVE ? COMPACT : CARD;
  const rank = new Map();
  for (let c = cols.length - 1; c >= 0; c--) {
    const order = c === cols.length - 1 && cols[c].every((n) => n.kind === "class")
      ? cols[c] // classes keep their order
      : orderByChildren(cols[c], view.kept, rank);
    order.forEach((n, i) => rank.set(n, i));
    cols[c] = order;
  }
  const pos = new Map();
  const headers = [];
  const columns = [];
  cols.forEach((nodes, c) => {
    const x = c * (style.w + style.gap);
    // centred columns; a compact (tall) drawing starts every column at the top
    const top = style === COMPACT ? 0 : ((largest - nodes.length) * style.row) / 2;
    nodes.forEach((n, i) => pos.set(n, { x, y: top + i * style.row, w: style.w, h: style.h }));
    headers.push({ x, name: model.columns[c].name, count: nodes.length, of: model.columns[c].size });
    columns.push({ x, top, nodes });
  });
  const width = cols.length * (style.w + style.gap) - style.gap;
  return { pos, style, headers, columns, width: Math.max(width, style.w),
    height: largest * style.row };
}

/** The drawn nodes whose boxes meet the rectangle [x0, x1] × [y0, y1] (drawing units). */
function nodesIn(geometry, x0, y0, x1, y1) {
  const s = geometry.style;
  const out = [];
  for (const col of geometry.columns) {
    if (col.x > x1 || col.x + s.w < x0) continue;
    const first = Math.max(0, Math.floor((y0 - col.top - s.h) / s.row));
    const last = Math.min(col.nodes.length - 1, Math.floor((y1 - col.top) / s.row));
    for (let i = first; i <= last; i++) out.push(col.nodes[i]);
  }
  return out;
}

/** The drawn node under the point (x, y) (drawing units), or null. */
function nodeAt(geometry, x, y) {
  const s = geometry.style;
  for (const col of geometry.columns) {
    if (x < col.x || x > col.x + s.w) continue;
    const i = Math.floor((y - col.top) / s.row);
    const n = col.nodes[i];
    return n && y - col.top - i * s.row <= s.h ? n : null;
  }
  return null;
}

/** `nodes` (one column) by the |weight|-weighted mean rank of their drawn children;
 *  childless nodes by influence after them; error nodes last. */
function orderByChildren(nodes, kept, rank) {
  const key = new Map();
  for (const n of nodes) {
    let sum = 0;
    let weight = 0;
    for (const l of n.out) {
      if (kept.has(l.target) && rank.has(l.target)) {
        sum += l.abs * rank.get(l.target);
        weight += l.abs;
      }
    }
    key.set(n, weight > 0 ? sum / weight : Infinity);
  }
  const group = (n) => (n.kind === "error" ? 1 : 0);
  return [...nodes].sort(
    (a, b) => group(a) - group(b) || key.get(a) - key.get(b) || b.influence - a.influence ||
      a.index - b.index,
  );
}
