// The explorer: reads the embedded data, keeps the view state (mirrored in the URL
// fragment), and redraws what changed: the model when supernodes are collapsed or
// expanded, pruning and layout when the drawn node set changes, node classes and the edge
// canvas otherwise. Pan with a drag, zoom with the wheel.

const VIEW_WRITE_MS = 250; // pan and zoom reach the URL this long after they stop

class Explorer {
  constructor(payload) {
    this.payload = payload;
    this.hierarchy = new Hierarchy(payload.hierarchy, payload.graph.nodes);
    this.graphIds = new Set(payload.graph.nodes.map((n) => n.node_id));
    this.state = readState(location.hash, this.graphIds, this.hierarchy);
    this.rebuild();
    this.t = { x: 0, y: 0, k: 1 };
    this.hovered = null;
    this.matches = null;
    this.activeRoute = null;
    this.view = null;
    this.geometry = null;
    this.nodeLayer = new NodeLayer(document.getElementById("node-layer"),
      document.getElementById("columns"));
    this.marks = {};
    this.canvasNodes = null; // nodes drawn as canvas boxes (view too large for SVG)
    this.stem = fileStem(this.model.meta.slug);
    this.timings = {};
    this.emphasisOf = (l) => this.emphasis(l);
    this.stage = document.getElementById("stage");
    this.canvas = document.getElementById("edges");
    this.ctx = this.canvas.getContext("2d");
    this.frame = 0;
    this.viewTimer = 0;
  }

  /** The model of the graph with the state's clusters collapsed (collapse.js); node ids of
   *  the state that are collapsed now become their cluster's. */
  rebuild() {
    this.model = buildModel(collapsedPayload(this.payload, this.hierarchy, this.state.collapsed));
    this.model.diff = diffOf(this.model);
    this.ids = new Set(this.model.nodes.map((n) => n.id));
    const chosen = new Set(this.state.collapsed);
    const now = (id) => {
      const found = id && (this.ids.has(id) ? id : this.hierarchy.ownerOf(id, chosen));
      return found && this.ids.has(found) ? found : null;
    };
    this.state.selected = now(this.state.selected);
    this.state.pins = [...new Set(this.state.pins.map(now).filter(Boolean))];
    this.view = null;
  }

  start() {
    setupControls(this);
    setupSearch(this);
    setupStage(this);
    showHeader(this);
    for (const text of this.payload.explorer && this.payload.explorer.warnings || []) {
      this.notify(text, "warn");
    }
    if (!this.model.nodes.length) {
      const text = "This graph has no nodes: there is nothing to draw.";
      this.notify(text, "error");
      this.stage.append(el("div", { class: "stage-message" }, text));
    } else if (!this.model.links.length) {
      this.notify("This graph has no edges: only its nodes are drawn.", "warn");
    }
    if (this.model.nodes.length && !this.model.nodes.some((n) => n.images.length)) {
      this.notify("This graph has no thumbnails: nodes show placeholders.", "info");
    }
    if (this.model.diff) document.body.classList.add("diff");
    this.update();
    if (this.state.view) this.showView(this.state.view);
    else {
      this.fit();
      if (this.state.selected) this.centerOn(this.model.byId.get(this.state.selected));
    }
    window.addEventListener("hashchange", () => {
      if (location.hash.replace(/^#/, "") === this.hash) return;
      const collapsed = this.state.collapsed.join(" ");
      this.state = readState(location.hash, this.graphIds, this.hierarchy);
      if (this.state.collapsed.join(" ") !== collapsed) this.rebuild();
      syncControls(this);
      this.update();
      if (this.state.view) this.showView(this.state.view);
    });
  }

  /** Recompute what is drawn for the current state and redraw. */
  update() {
    const began = performance.now();
    const forced = new Set(this.state.pins);
    if (this.state.selected) forced.add(this.state.selected);
    for (const r of this.shownRoutes()) r.nodes.forEach((n) => forced.add(n.id));
    const before = this.view;
    this.view = prune(this.model, this.state, forced);
    if (!before || !sameSet(before.kept, this.view.kept)) {
      this.geometry = layout(this.model, this.view);
      this.nodeLayer.reset(this.geometry);
    }
    const cls = this.state.cls && this.model.byId.get(this.state.cls);
    this.ancestry = cls && this.view.kept.has(cls) ? ancestry(this.view, cls) : null;
    this.restyle();
    renderPanel(this);
    this.writeHash();
    showStatus(this);
    this.timings.update = performance.now() - began;
  }

  /** Re-mark nodes and redraw edges (hover, selection, matches: no re-pruning). */
  restyle() {
    const routeNodes = new Set(this.shownRoutes().flatMap((r) => r.nodes));
    const one = (id) => (id && this.model.byId.get(id) ? new Set([this.model.byId.get(id)]) : null);
    this.marks = {
      selected: one(this.state.selected),
      hovered: this.hovered ? new Set([this.hovered]) : null,
      pinned: new Set(this.state.pins.map((id) => this.model.byId.get(id))),
      match: this.matches,
      route: routeNodes.size ? routeNodes : null,
      ancestor: this.ancestry,
      dim: this.ancestry ? new Set(this.view.nodes.filter((n) => !this.ancestry.has(n))) : null,
    };
    this.nodeLayer.mark(this.marks);
    this.syncNodes();
    this.draw();
  }

  /** Which drawn nodes are SVG groups: all of a small view; of a large one those in and
   *  around the window, or none (canvas boxes) when even those are too many. */
  syncNodes() {
    const all = this.view.nodes;
    let shown = all;
    this.canvasNodes = null;
    if (all.length > SVG_ALL) {
      const w = this.stage.clientWidth / this.t.k;
      const h = this.stage.clientHeight / this.t.k;
      const x0 = -this.t.x / this.t.k;
      const y0 = -this.t.y / this.t.k;
      shown = nodesIn(this.geometry, x0 - w / 2, y0 - h / 2, x0 + 1.5 * w, y0 + 1.5 * h);
      if (shown.length > SVG_CAP) {
        this.canvasNodes = nodesIn(this.geometry, x0, y0, x0 + w, y0 + h);
        shown = [];
      }
    }
    this.nodeLayer.show(shown, this.marks);
  }

  /** How strongly `link` is drawn: the hovered or selected node's edges stand out, a
   *  class's ancestry stays and the rest fades. */
  emphasis(link) {
    const focus = this.hovered || (this.state.selected && this.model.byId.get(this.state.selected));
    if (focus) return link.source === focus || link.target === focus ? STRONG : FADED;
    if (this.activeRoute !== null) return FADED;
    if (this.ancestry) return this.ancestry.has(link.target) && this.ancestry.has(link.source) ? NORMAL : FADED;
    return NORMAL;
  }

  shownRoutes() {
    return this.state.routes ? this.model.routes : [];
  }

  /** Redraw the edge canvas (at most once per animation frame). */
  draw() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.syncNodes();
      this.drawNow();
    });
  }

  drawNow() {
    const began = performance.now();
    const size = { width: this.stage.clientWidth, height: this.stage.clientHeight };
    drawEdges(this.ctx, size, this.t, this.view.links, this.geometry.pos, this.emphasisOf,
      this.shownRoutes(), this.activeRoute);
    if (this.canvasNodes) drawNodeBoxes(this.ctx, this.canvasNodes, this.geometry.pos, this.marks, this.t);
    this.timings.draw = performance.now() - began;
  }

  /** Show the pan/zoom `this.t`; `remember` (default) keeps it in the state and, once
   *  panning and zooming stop, in the URL. */
  applyTransform(remember = true) {
    document.getElementById("viewport").setAttribute("transform",
      `translate(${this.t.x},${this.t.y}) scale(${this.t.k})`);
    this.draw();
    if (!remember) return;
    const k = this.t.k;
    this.state.view = { k, x: (this.stage.clientWidth / 2 - this.t.x) / k,
      y: (this.stage.clientHeight / 2 - this.t.y) / k };
    clearTimeout(this.viewTimer);
    this.viewTimer = setTimeout(() => this.writeHash(), VIEW_WRITE_MS);
  }

  /** Pan and zoom so that the drawing point (view.x, view.y) is at the stage's centre. */
  showView(view) {
    this.t = { k: view.k, x: this.stage.clientWidth / 2 - view.x * view.k,
      y: this.stage.clientHeight / 2 - view.y * view.k };
    this.applyTransform();
  }

  zoomAt(factor, sx, sy) {
    const k = clamp(this.t.k * factor, ZOOM_MIN, ZOOM_MAX);
    this.t.x = sx - ((sx - this.t.x) * k) / this.t.k;
    this.t.y = sy - ((sy - this.t.y) * k) / this.t.k;
    this.t.k = k;
    this.applyTransform();
  }

  /** Zoom to show the whole drawing; a drawing far taller than wide (thousands of nodes
   *  per column) is fitted to the width instead, top first: pan down to see the rest. */
  fit() {
    const g = this.geometry;
    const w = this.stage.clientWidth;
    const h = this.stage.clientHeight;
    const byWidth = (w - 40) / g.width;
    const both = Math.min(byWidth, (h - 70) / (g.height || 1));
    const k = clamp(both >= 0.3 * byWidth ? both : byWidth, ZOOM_MIN, 1);
    this.t = { k, x: (w - g.width * k) / 2, y: Math.max(55, (h - g.height * k) / 2 + 20) };
    this.applyTransform(false);
    this.state.view = null; // the default view: not written into the URL
    this.writeHash();
  }

  centerOn(n) {
    const p = n && this.geometry.pos.get(n);
    if (!p) return;
    const k = Math.max(this.t.k, 0.6);
    this.t = { k, x: this.stage.clientWidth / 2 - (p.x + p.w / 2) * k,
      y: this.stage.clientHeight / 2 - (p.y + p.h / 2) * k };
    this.applyTransform();
  }

  // -- actions (controls, panel, search, stage) -----------------------------------------

  select(id, center) {
    this.state.selected = id && this.ids.has(id) ? id : null;
    this.update();
    if (center && this.state.selected) this.centerOn(this.model.byId.get(id));
  }

  togglePin(id) {
    const pins = this.state.pins;
    this.state.pins = pins.includes(id) ? pins.filter((p) => p !== id) : [...pins, id];
    this.update();
  }

  setClass(id) {
    this.state.cls = id && this.ids.has(id) ? id : null;
    document.getElementById("class-select").value = this.state.cls || "";
    this.update();
  }

  setRoute(index) {
    this.activeRoute = index;
    this.restyle();
    renderPanel(this);
  }

  setMatches(set) {
    this.matches = set && set.size ? set : null;
    this.restyle();
  }

  hover(n) {
    if (n === this.hovered) return;
    this.hovered = n;
    this.restyle();
  }

  set(key, value) {
    this.state[key] = value;
    this.update();
  }

  /** Collapse node or cluster `id` into its bisecting k-means parent cluster, selected. */
  collapse(id) {
    const next = this.hierarchy.collapse(id, this.state.collapsed);
    if (!next) return;
    this.setCollapsed(next.keys);
    this.select(next.key, true);
  }

  /** Expand the collapsed cluster `key` one level. */
  expand(key) {
    this.setCollapsed(this.hierarchy.expand(key, this.state.collapsed));
  }

  /** Collapse every drawn concept of `layer` one level (or, with `all`, expand them all). */
  collapseLayer(layer, all) {
    const keys = this.state.collapsed;
    this.setCollapsed(all ? keys.filter((k) => this.hierarchy.cluster(k).layer !== layer)
      : this.hierarchy.collapseAll(this.view.nodes.filter((n) => n.kind === "concept" &&
        n.raw.layer_name === layer).map((n) => n.id), keys));
  }

  setCollapsed(keys) {
    if (keys.join(" ") === this.state.collapsed.join(" ")) return;
    this.state.collapsed = keys;
    this.rebuild();
    this.update();
  }

  writeHash() {
    clearTimeout(this.viewTimer);
    this.hash = writeState(this.state);
    const url = location.href.split("#")[0] + (this.hash ? `#${this.hash}` : "");
    if (url !== location.href) history.replaceState(null, "", url);
  }

  notify(text, level) {
    const box = document.getElementById("notices");
    const close = el("button", { type: "button", class: "small", "aria-label": "dismiss" }, "×");
    const note = el("div", { class: `notice ${level || "info"}` }, el("span", {}, text), close);
    close.addEventListener("click", () => note.remove());
    box.append(note);
  }
}

function sameSet(a, b) {
  if (a.size !== b.size) return false;
  for (const x of a) if (!b.has(x)) return false;
  return true;
}

function showHeader(app) {
  const meta = app.model.meta;
  document.getElementById("title").textContent = meta.slug ? `${meta.slug}` : "concept graph";
  const images = Array.isArray(meta.prompt_tokens) ? meta.prompt_tokens : [];
  const parts = [app.model.diff && `difference ${app.model.diff}`, meta.scan,
    app.model.ierf.method && `ICAT ${app.model.ierf.method}`,
    images.length === 1 ? `image ${images[0]}` : images.length ? `${images.length} images` : null,
    app.model.routes.length ? `${app.model.routes.length} routes` : null];
  document.getElementById("subtitle").textContent = parts.filter(Boolean).join(" · ");
}

function showStatus(app) {
  const v = app.view;
  const m = app.model;
  const pins = app.state.pins.length;
  const supers = app.state.collapsed.length;
  document.getElementById("status").textContent = (m.diff ? `difference ${m.diff} · ` : "") +
    `${v.nodes.length} of ${m.nodes.length} nodes · ${v.links.length} of ${m.links.length} ` +
    `edges drawn` + (pins ? ` · ${pins} pinned` : "") +
    (supers ? ` · ${supers} supernode${supers > 1 ? "s" : ""}` : "") +
    (app.state.cls ? ` · ancestry of ${m.byId.get(app.state.cls).label}` : "");
  document.body.dataset.nodes = String(v.nodes.length);
  document.body.dataset.edges = String(v.links.length);
  document.getElementById("export-json").disabled = !pins;
  document.getElementById("clear-pins").disabled = !pins;
}

function fatal(message) {
  document.body.dataset.state = "error";
  const box = document.getElementById("notices");
  box.append(el("div", { class: "notice error fatal" }, message));
  const stage = document.getElementById("stage");
  stage.replaceChildren(el("div", { class: "stage-message" }, message));
}

function main() {
  const began = performance.now();
  let payload;
  try {
    payload = JSON.parse(document.getElementById("ierf-data").textContent);
  } catch (e) {
    fatal(`The page's graph data cannot be read (${e.message}). Export it again with ` +
      "`ierf graph show`.");
    return;
  }
  const parsed = performance.now();
  const problem = problemWith(payload);
  if (problem) {
    fatal(problem);
    return;
  }
  const app = new Explorer(payload);
  app.timings.parse = parsed - began;
  app.timings.model = performance.now() - parsed;
  app.start();
  app.drawNow();
  document.getElementById("loading")?.remove();
  app.timings.start = performance.now() - began;
  app.timings.ready = performance.now();
  document.body.dataset.state = "ready";
  window.ierfExplorer = app; // for the browser tests and the console
}

main();
