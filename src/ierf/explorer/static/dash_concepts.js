// The concept dashboard: cards and the panel of one concept (its nearest PFVs with their
// iERFs, its class importances, its place in the concept graph).

const CONCEPTS = {
  setName: "Basis",
  filterName: "Class",
  sorts: [["frequency", "frequency"], ["activation", "mean coefficient"], ["k", "index"]],

  /** [value, label] of the filter select: the classes that appear in the set. */
  filters(set) {
    const seen = new Set(Object.keys(set.by_class || {}).map(Number));
    for (const item of set.items) for (const [c] of item.importance) seen.add(c);
    return [["", "— any —"], ...[...seen].sort((a, b) => a - b)
      .map((c) => [String(c), className(set, c)])];
  },

  /** The item's value for class filter `value`: its importance for the class where the
   * class is among the item's top classes or the item among the class's top concepts
   * (`by_class`); undefined otherwise. */
  filterValue(item, value, set) {
    const hit = item.importance.find(([c]) => String(c) === value);
    return hit ? hit[1] : classIndex(set, value).get(item.k);
  },

  sortValue(item, key) {
    return key === "k" ? -item.k : item[key];
  },

  searchText(item) {
    return `${item.label} ${item.k} ${item.node || ""}`.toLowerCase();
  },

  card(item, set) {
    const [c, v] = item.importance[0] || [];
    return el("div", { class: "card", role: "button", tabindex: "0" },
      el("div", { class: "card-head" },
        el("span", { class: "card-label", title: item.label }, item.label),
        el("span", { class: "card-index" }, `#${item.k}`)),
      el("div", { class: "strip" }, item.top.slice(0, 4).map((s) =>
        picture(set.samples[s].picture, `nearest PFV in ${set.samples[s].image}`, "thumb"))),
      el("div", { class: "card-foot" },
        el("span", { title: "share of atlas PFVs where the concept's coefficient is non-zero" },
          `freq ${pct(item.frequency)}`),
        c === undefined ? null : el("span", { class: "card-class", title: importanceTitle(set) },
          `${className(set, c)} ${fmt(v)}`)));
  },

  panel(item, set, app) {
    const nodes = [
      el("h2", { class: "item-label" }, item.label),
      el("div", { class: "item-sub" }, `concept ${item.k} of ${set.n_concepts} · ${set.layer} · ${set.method}`),
      facts([
        ["frequency", pct(item.frequency), "share of the atlas' PFVs with a non-zero coefficient"],
        ["mean coefficient", fmt(item.activation)],
        ["graph node", item.node || "not in the graph"],
      ]),
      el("h3", null, importanceTitle(set)),
      item.importance.length
        ? bars(item.importance.map(([c, v]) => [className(set, c), v]))
        : el("p", { class: "muted" }, "no class importance"),
      el("h3", null, `Nearest PFVs (${set.nearest_by}) with their iERFs`),
      el("div", { class: "pfvs" }, item.top.map((s, i) => pfvFigure(set, s, item.coef[i]))),
    ];
    if (set.graph) nodes.push(...graphSection(item, set, app));
    return nodes;
  },
};

/** set → class → (concept → importance), from the set's `by_class`, built on first use. */
const BY_CLASS = new WeakMap();

function classIndex(set, value) {
  if (!BY_CLASS.has(set)) BY_CLASS.set(set, new Map());
  const perClass = BY_CLASS.get(set);
  if (!perClass.has(value)) perClass.set(value, new Map((set.by_class || {})[value] || []));
  return perClass.get(value);
}

function className(set, c) {
  return set.classes[c] !== undefined ? String(set.classes[c]) : `class ${c}`;
}

function importanceTitle(set) {
  return set.importance_kind === "graph"
    ? "Class importance (graph: Σ AT(u, logit_c))"
    : "Class share (coefficient mass on images predicted as the class)";
}

/** One nearest PFV: its image dimmed outside its iERF, its position boxed on the grid. */
function pfvFigure(set, s, coef) {
  const sample = set.samples[s];
  const frame = el("div", { class: "frame" }, picture(sample.picture, `iERF in ${sample.image}`, "thumb-large"));
  if (set.grid) {
    const [h, w] = set.grid;
    frame.append(el("span", { class: "token-box", title: `PFV at row ${sample.row}, column ${sample.col}`,
      style: `left:${(100 * sample.col / w).toFixed(3)}%;top:${(100 * sample.row / h).toFixed(3)}%;` +
        `width:${(100 / w).toFixed(3)}%;height:${(100 / h).toFixed(3)}%` }));
  }
  return el("figure", null, frame,
    el("figcaption", null, el("span", { class: "file", title: sample.image }, `image ${sample.image}`),
      ` u=${fmt(coef)}`));
}

/** The concept's in / out ICAT edges, strongest first; concepts of this page are links. */
function graphSection(item, set, app) {
  if (!item.node) return [el("p", { class: "muted" }, `Not a node of graph ${set.graph}.`)];
  const list = (edges, total, side) => [
    el("h4", null, `${side} (${total}${total > edges.length ? `, ${edges.length} strongest shown` : ""})`),
    edges.length ? el("ul", { class: "edges" }, edges.map(([id, label, w]) => {
      const target = app.nodeIndex.get(id);
      return el("li", { class: target ? "link" : null, "data-node": id,
        onclick: target ? () => app.open(target[0], target[1]) : null },
      el("span", { class: `weight ${w < 0 ? "neg" : "pos"}` }, fmt(w)),
      el("span", { class: "edge-label", title: id }, label));
    })) : el("p", { class: "muted" }, "none"),
  ];
  const chain = el("ol", { class: "chain", title: "the graph's layers, input side first" },
    (set.graph_layers || []).map((l) => el("li", { class: l === set.layer ? "here" : null }, l)));
  return [el("h3", null, `In graph ${set.graph}`), chain,
    ...list(item.in || [], item.n_in || 0, "incoming"), ...list(item.out || [], item.n_out || 0, "outgoing")];
}
