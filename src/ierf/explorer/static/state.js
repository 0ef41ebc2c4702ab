// The view state (threshold, top-k, nodes per layer, class, selection, pins, routes,
// collapsed supernodes, zoom and pan) and its URL-fragment form, so that a view can be
// shared: only values that differ from the defaults are written, e.g.
// "#t=0.2&c=output%3A3&sel=layer3%3A2&pin=layer2%3A1&sup=layer3%3A20&v=410.5%2C220%2C0.8".

const STATE_DEFAULTS = Object.freeze({
  threshold: 0.05, // share of the strongest |weight| of the same layer pair
  topK: 5, // strongest incoming edges kept per node (0: all)
  perLayer: 24, // concept nodes per layer, by influence (0: all)
  cls: null, // node id of the class whose ancestry is highlighted
  selected: null, // node id shown in the side panel
  pins: [], // pinned node ids
  routes: true, // overlay the routes (per-image mode)
  collapsed: [], // supernodes: collapsed clusters "layer:treeNode" (collapse.js)
  view: null, // {x, y, k}: the drawing point at the stage's centre and the zoom (null: fit)
});
const ZOOM_MIN = 0.02;
const ZOOM_MAX = 4;
const TOPK_CHOICES = [1, 2, 3, 5, 10, 20, 0];
const PER_LAYER_CHOICES = [8, 16, 24, 48, 100, 250, 1000, 0];

/** The state written in `hash` (a URL fragment): node ids checked against `validIds`
 *  (the graph's) or the collapsed clusters, clusters against `hierarchy`. */
function readState(hash, validIds, hierarchy) {
  const state = { ...STATE_DEFAULTS, pins: [] };
  const params = new URLSearchParams(String(hash || "").replace(/^#/, ""));
  const num = (key) => (params.has(key) ? Number(params.get(key)) : NaN);
  if (Number.isFinite(num("t"))) state.threshold = clamp(num("t"), 0, 1);
  if (Number.isInteger(num("k")) && num("k") >= 0) state.topK = num("k");
  if (Number.isInteger(num("n")) && num("n") >= 0) state.perLayer = num("n");
  state.collapsed = hierarchy.normalize(params.getAll("sup"));
  const known = (id) => validIds.has(id) || state.collapsed.includes(id);
  if (validIds.has(params.get("c"))) state.cls = params.get("c");
  if (known(params.get("sel"))) state.selected = params.get("sel");
  state.pins = [...new Set(params.getAll("pin").filter(known))];
  if (params.get("routes") === "0") state.routes = false;
  const v = String(params.get("v") || "").split(",").map(Number);
  if (v.length === 3 && v.every(Number.isFinite) && v[2] > 0) {
    state.view = { x: v[0], y: v[1], k: clamp(v[2], ZOOM_MIN, ZOOM_MAX) };
  }
  return state;
}

/** The URL fragment of `state` (without "#"). */
function writeState(state) {
  const params = new URLSearchParams();
  const d = STATE_DEFAULTS;
  if (state.threshold !== d.threshold) params.set("t", String(state.threshold));
  if (state.topK !== d.topK) params.set("k", String(state.topK));
  if (state.perLayer !== d.perLayer) params.set("n", String(state.perLayer));
  if (state.cls) params.set("c", state.cls);
  if (state.selected) params.set("sel", state.selected);
  for (const id of state.pins) params.append("pin", id);
  if (!state.routes) params.set("routes", "0");
  for (const key of state.collapsed) params.append("sup", key);
  if (state.view) {
    const r = (x, digits) => String(Number(x.toFixed(digits)));
    params.set("v", `${r(state.view.x, 1)},${r(state.view.y, 1)},${r(state.view.k, 4)}`);
  }
  return params.toString();
}
