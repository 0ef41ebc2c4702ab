// The side panel: the graph's summary (with routes, supernode controls and pins) when
// nothing is selected; a node's card when one is: thumbnails, coefficient statistics (with
// both graphs' values in a diff), class importances, the faithfulness of its incoming edges
// (from `ierf bench graph`), collapse / expand, and its strongest incoming and outgoing
// edges. Also the hover tooltip.

const PANEL_EDGES = 12;
const PANEL_CLASSES = 20;
const TOOLTIP_EDGES = 8;

function renderPanel(app) {
  const panel = document.getElementById("panel");
  const node = app.state.selected ? app.model.byId.get(app.state.selected) : null;
  panel.replaceChildren(...(node ? nodeCard(app, node) : summary(app)));
  panel.classList.toggle("has-node", Boolean(node));
}

function summary(app) {
  const m = app.model;
  const meta = m.meta || {};
  const images = Array.isArray(meta.prompt_tokens) ? meta.prompt_tokens : [];
  const out = [
    el("h2", {}, "Graph"),
    el("dl", { class: "stats" },
      row("model", meta.scan || "–"),
      row("method", m.ierf.method || "–"),
      row("layers", m.columns.map((c) => c.name).join(" → ")),
      row("nodes", `${m.nodes.length}`),
      row("edges", `${m.links.length}`),
      row("classes", `${m.classes.length}`),
      row("images", images.length > 6
        ? `${images.length} (${images.slice(0, 5).join(", ")}, …)` : images.join(", ") || "–")),
    el("h3", {}, "Reading the graph"),
    el("ul", { class: "help" },
      m.diff ? el("li", {}, `a difference of two graphs, ${m.diff}: `,
        el("span", { class: "swatch pos" }), " edge weight grew, ",
        el("span", { class: "swatch neg" }), " shrank; width and opacity grow with |change|; ",
        "dashed nodes are in one graph only")
        : el("li", {}, el("span", { class: "swatch pos" }), " positive ICAT edge, ",
          el("span", { class: "swatch neg" }), " negative; width and opacity grow with |weight|"),
      el("li", {}, "hover a node: its strongest incoming and outgoing edges"),
      el("li", {}, "click: details here; ctrl-click (⌘-click): pin it"),
      el("li", {}, "drag (or shift-wheel) to pan, wheel to zoom, / to search, Esc to close")),
  ];
  if (m.routes.length) {
    out.push(el("h3", {}, `Routes of this image (${m.routes.length})`));
    const list = el("ol", { class: "routes" });
    for (const r of m.routes) {
      const item = el("li", {
        class: r.index === app.activeRoute ? "active" : "",
        onclick: () => app.setRoute(r.index === app.activeRoute ? null : r.index),
      }, el("span", { class: "value" }, fmt(r.strength, true)), " ",
      r.nodes.map((n) => n.label).join(" → "));
      list.append(item);
    }
    out.push(list);
  }
  out.push(...supernodeControls(app));
  if (app.state.pins.length) {
    out.push(el("h3", {}, `Pinned (${app.state.pins.length})`));
    out.push(el("ul", { class: "pins" }, app.state.pins.map((id) => {
      const n = m.byId.get(id);
      return el("li", {}, nodeLink(app, n), " ",
        el("button", { type: "button", class: "small", onclick: () => app.togglePin(id) },
          "unpin"));
    })));
  }
  return out;
}

function nodeCard(app, n) {
  const r = n.raw;
  const pinned = app.state.pins.includes(n.id);
  const out = [
    el("div", { class: "card-head" },
      el("span", { class: `badge kind-${n.kind}` }, n.kind),
      el("button", { type: "button", class: "small", id: "pin-button",
        onclick: () => app.togglePin(n.id) }, pinned ? "Unpin" : "Pin"),
      el("button", { type: "button", class: "small", "aria-label": "close",
        onclick: () => app.select(null) }, "×")),
    el("h2", { class: "node-label" }, n.label),
    el("div", { class: "node-id" }, el("code", {}, n.id), ` · ${n.layerName}`),
  ];
  if (r.diff_only) {
    out.push(el("div", { class: `only-note only-${r.diff_only}` },
      `only in ${r.diff_only === "a" ? "A" : "B"} of ${app.model.diff} (the other counts as 0)`));
  }
  out.push(...clusterCard(app, n));
  if (n.images.length) {
    out.push(el("div", { class: "thumbs" }, n.images.map((src, i) =>
      el("img", { src, alt: `image ${i + 1} of ${n.label}`, class: "thumb-large" }))));
  } else {
    out.push(el("div", { class: "no-thumb" }, "No thumbnail in the graph file."));
  }
  if (app.model.diff) out.push(el("h3", {}, `Change ${app.model.diff}`));
  const stats = el("dl", { class: "stats" });
  const add = (key, value) => value !== undefined && value !== null && stats.append(...row(key, value));
  if (n.kind === "concept") {
    add("activation (mean coefficient)", fmt(r.activation));
    add("frequency (share non-zero)", fmt(r.frequency));
    add("basis index", r.basis_index);
  } else if (n.kind === "error") {
    add("residual share ‖X − X̂‖/‖X‖", fmt(r.error_share));
  } else {
    add("class index", r.feature);
    add("probability", fmt(r.token_prob));
    add("logit", fmt(r.activation));
  }
  add("influence Σ|importance|", fmt(n.influence));
  add("edges in / out", `${n.in.length} / ${n.out.length}`);
  out.push(stats);
  out.push(...faithfulnessCard(app, n));
  if (r.diff_sides) out.push(el("h3", {}, `Both graphs (${app.model.diff})`), sidesTable(r.diff_sides));
  if (Array.isArray(r.importance) && r.importance.length) {
    out.push(el("h3", {}, "Class importance"), importanceBars(app, r.importance));
  }
  if (n.kind === "class") {
    const top = topConcepts(app.model, n);
    if (top.length) {
      out.push(el("h3", {}, "Most important concepts (last layer)"));
      out.push(el("ul", { class: "edges" }, top.map(([m, v]) => edgeItem(app, m, v))));
    }
  }
  out.push(el("h3", {}, `Incoming edges (${n.in.length})`), edgeList(app, n.in, "source"));
  out.push(el("h3", {}, `Outgoing edges (${n.out.length})`), edgeList(app, n.out, "target"));
  return out;
}

/** The interlayer C-deletion / C-insertion AUCs of concept `n`'s incoming edges (IERF
 *  Sec. VI-C1, measured by `ierf bench graph`; payload.faithfulness), the graph's ICAT
 *  method first, with what they mean. */
function faithfulnessCard(app, n) {
  const f = app.payload.faithfulness;
  const pair = f && n.kind === "concept" && !n.raw.supernode
    ? f.pairs.find((p) => p.target === n.raw.layer_name) : null;
  if (!pair) return [];
  const head = el("h3", {}, "Faithfulness of incoming edges");
  const entry = f.nodes[n.id];
  if (!entry) {
    return [head, el("p", { class: "muted faithfulness" }, "Not measured: `ierf bench graph` " +
      `took the ${pair.targets_per_image} most important concepts of each of its ` +
      `${pair.n_images} images as targets, and this was none of them.`)];
  }
  const methods = [f.method, ...Object.keys(entry.deletion).sort()]
    .filter((m, i, all) => m in entry.deletion && all.indexOf(m) === i);
  return [head,
    el("table", { class: "sides faithfulness" },
      el("tr", {}, el("th", {}, "ICAT method"), el("th", {}, "C-deletion AUC ↓"),
        el("th", {}, "C-insertion AUC ↑")),
      methods.map((m) => el("tr", { "data-method": m },
        el("td", {}, m === f.method ? el("b", {}, `${m} (these edges)`) : m),
        el("td", {}, fmt(entry.deletion[m])), el("td", {}, fmt((entry.insertion || {})[m]))))),
    el("p", { class: "muted" }, `Interlayer C-deletion / C-insertion (IERF Sec. VI-C), mean ` +
      `over ${entry.pairs} (image, target) pair(s) of \`ierf bench graph\`: this concept's ` +
      `parents in ${entry.source} are deleted from (inserted into) the image in the order ` +
      "of its incoming edges while its presence here is followed. Lower deletion AUC / " +
      "higher insertion AUC = the edges rank the parents faithfully (compare with random).")];
}

function row(key, value) {
  return [el("dt", {}, key), el("dd", {}, String(value))];
}

/** A clickable node name. */
function nodeLink(app, n) {
  return el("a", { href: "#", class: "node-link", title: n.id,
    onclick: (e) => { e.preventDefault(); app.select(n.id, true); } }, n.label);
}

function edgeItem(app, node, weight, link) {
  const sides = link && app.model.diff && ("weight_a" in link.raw || "weight_b" in link.raw)
    ? el("span", { class: "muted" }, ` (${fmt(link.raw.weight_a)} → ${fmt(link.raw.weight_b)})`)
    : null;
  return el("li", {}, el("span", { class: `value ${weight >= 0 ? "pos" : "neg"}` },
    fmt(weight, true)), sides, " ", nodeLink(app, node));
}

function edgeList(app, links, end) {
  if (!links.length) return el("p", { class: "muted" }, "none");
  const list = el("ul", { class: "edges" },
    links.slice(0, PANEL_EDGES).map((l) => edgeItem(app, l[end], l.weight, l)));
  if (links.length > PANEL_EDGES) list.append(el("li", { class: "muted" }, `… ${links.length - PANEL_EDGES} more`));
  return list;
}

/** A node's values in the two graphs of a diff (A, B and the change B − A). */
function sidesTable(sides) {
  const fields = [...new Set(["a", "b"].flatMap((s) => Object.keys(sides[s] || {})))];
  const value = (side, f) => (sides[side] ? fmt(sides[side][f]) : "absent");
  const change = (f) => {
    const a = sides.a ? sides.a[f] : 0;
    const b = sides.b ? sides.b[f] : 0;
    return typeof a === "number" || typeof b === "number" ? fmt((b || 0) - (a || 0), true) : "–";
  };
  return el("table", { class: "sides" },
    el("tr", {}, el("th", {}, ""), el("th", {}, "A"), el("th", {}, "B"), el("th", {}, "B − A")),
    fields.map((f) => el("tr", {}, el("td", {}, f), el("td", {}, value("a", f)),
      el("td", {}, value("b", f)), el("td", {}, change(f)))));
}

/** Collapse / expand for a concept node of a layer with a split tree; a supernode's
 *  members. */
function clusterCard(app, n) {
  const h = app.hierarchy;
  const r = n.raw;
  if (n.kind !== "concept" || !h.has(r.layer_name)) return [];
  const unit = h.unit(n.id);
  const up = unit ? h.parentCluster(unit) : -1;
  const tree = h.trees.get(r.layer_name);
  const collapse = el("button", { type: "button", class: "small", id: "collapse-button",
    disabled: up < 0, onclick: () => app.collapse(n.id),
    title: up < 0 ? "already the whole layer"
      : `merge into its bisecting k-means cluster of ${tree.count[up]} concepts` },
  r.supernode ? "Collapse further" : "Collapse into cluster");
  if (!r.supernode) return [el("div", { class: "cluster-buttons" }, collapse)];
  const s = r.supernode;
  const shown = s.labels.slice(0, PANEL_EDGES);
  return [
    el("div", { class: "cluster-buttons" },
      el("button", { type: "button", class: "small", id: "expand-button",
        onclick: () => app.expand(n.id) }, "Expand"), collapse),
    el("p", { class: "muted" }, `Supernode: ${s.members.length} concepts of a bisecting ` +
      `k-means cluster (${s.pfvs} PFVs); its edges and importances are the sums of theirs.`),
    el("ul", { class: "members" }, shown.map((label, i) =>
      el("li", {}, label, " ", el("code", {}, s.members[i]))),
    s.labels.length > shown.length ? el("li", { class: "muted" }, `… ${s.labels.length - shown.length} more`) : null),
  ];
}

/** Per layer with a split tree: collapse its drawn concepts one level, or expand all. */
function supernodeControls(app) {
  const layers = app.model.columns.map((c) => c.name).filter((name) => app.hierarchy.has(name));
  if (!layers.length) return [];
  return [
    el("h3", {}, "Supernodes (bisecting k-means)"),
    el("ul", { class: "layers" }, layers.map((layer) => {
      const n = app.state.collapsed.filter((k) => app.hierarchy.cluster(k).layer === layer).length;
      return el("li", {}, el("span", { class: "layer-name" }, layer),
        el("span", { class: "muted" }, n ? ` ${n} collapsed ` : " "),
        el("button", { type: "button", class: "small", "data-layer": layer,
          title: "merge each drawn concept of this layer into its parent cluster",
          onclick: () => app.collapseLayer(layer, false) }, "collapse a level"), " ",
        el("button", { type: "button", class: "small", disabled: !n, "data-expand": layer,
          onclick: () => app.collapseLayer(layer, true) }, "expand all"));
    })),
  ];
}

/** Bars of a node's importance for each class, largest |value| first; a click selects
 *  the class. */
function importanceBars(app, values) {
  const m = app.model;
  const names = Array.isArray(m.ierf.class_names) ? m.ierf.class_names : [];
  const biggest = Math.max(...values.map((v) => Math.abs(v || 0))) || 1;
  const rows = values.map((v, j) => ({ v: v || 0, j })).sort((a, b) => Math.abs(b.v) - Math.abs(a.v));
  const list = el("ul", { class: "bars" }, rows.slice(0, PANEL_CLASSES).map(({ v, j }) => {
    const cls = m.classes.find((c) => c.column === j);
    const name = names[j] !== undefined ? names[j] : cls ? cls.node.label : `class ${j}`;
    return el("li", { title: "highlight this class's ancestry",
      onclick: () => cls && app.setClass(cls.node.id) },
    el("span", { class: "bar-name", title: name }, name),
    el("span", { class: "bar" }, el("span", { class: `fill ${v >= 0 ? "pos" : "neg"}`,
      style: `width:${(100 * Math.abs(v)) / biggest}%` })),
    el("span", { class: `value ${v >= 0 ? "pos" : "neg"}` }, fmt(v, true)));
  }));
  if (rows.length > PANEL_CLASSES) {
    list.append(el("li", { class: "muted" }, `… ${rows.length - PANEL_CLASSES} more classes`));
  }
  return list;
}

/** The concepts of the last concept column most important for class node `n`. */
function topConcepts(model, n) {
  const cls = model.classes.find((c) => c.node === n);
  if (!cls || cls.column < 0 || model.columns.length < 2) return [];
  const last = model.columns[model.columns.length - 2];
  return last.concepts
    .map((m) => [m, Array.isArray(m.raw.importance) ? m.raw.importance[cls.column] || 0 : 0])
    .sort((a, b) => Math.abs(b[1]) - Math.abs(a[1]))
    .slice(0, 8);
}

/** The hover tooltip of `n` at screen point (x, y), or hidden when `n` is null. */
function showTooltip(n, x, y) {
  const tip = document.getElementById("tooltip");
  if (!n) {
    tip.hidden = true;
    return;
  }
  const list = (links, end) => el("ul", {}, links.length ? links.slice(0, TOOLTIP_EDGES).map((l) =>
    el("li", {}, el("span", { class: `value ${l.weight >= 0 ? "pos" : "neg"}` }, fmt(l.weight, true)),
      " ", truncate(l[end].label, 40))) : el("li", { class: "muted" }, "none"),
  links.length > TOOLTIP_EDGES ? el("li", { class: "muted" }, `… ${links.length - TOOLTIP_EDGES} more`) : null);
  tip.replaceChildren(
    el("div", { class: "tip-title" }, n.label),
    el("div", { class: "muted" }, `${n.id} · ${nodeLine(n)}`),
    el("div", { class: "tip-cols" },
      el("div", {}, el("b", {}, `in (${n.in.length})`), list(n.in, "source")),
      el("div", {}, el("b", {}, `out (${n.out.length})`), list(n.out, "target"))));
  tip.hidden = false;
  const stage = document.getElementById("stage").getBoundingClientRect();
  const w = tip.offsetWidth;
  const h = tip.offsetHeight;
  tip.style.left = `${clamp(x - stage.left + 16, 4, Math.max(4, stage.width - w - 4))}px`;
  tip.style.top = `${clamp(y - stage.top + 16, 4, Math.max(4, stage.height - h - 4))}px`;
}
