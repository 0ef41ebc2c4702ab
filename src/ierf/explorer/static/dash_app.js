// The dashboard: reads the embedded payload, checks it, and wires the grid, the controls,
// the panel and the URL fragment (set, search, filter, sort, selected item) together.

const KINDS = { concepts: CONCEPTS, latents: LATENTS };
const CARD_W = 244, CARD_H = 286;

/** The payload, or a message saying why it cannot be shown. */
function readPayload() {
  let data;
  try {
    data = JSON.parse(document.getElementById("ierf-data").textContent);
  } catch (e) {
    return { error: `The dashboard's data is damaged (${e.message}); write the page again.` };
  }
  const meta = data && data.dashboard;
  if (!meta || !Array.isArray(data.sets) || !Array.isArray(data.images)) {
    return { error: "This page holds no ierf dashboard data; write it with `ierf concepts show` or `ierf cafe report`." };
  }
  if (!DASHBOARD_VERSIONS.includes(meta.version)) {
    const newest = Math.max(...DASHBOARD_VERSIONS);
    return { error: typeof meta.version === "number" && meta.version > newest
      ? `This dashboard has data version ${meta.version}, newer than this page reads (${newest}): write it again with this ierf or upgrade.`
      : `This dashboard has data version ${JSON.stringify(meta.version)}; this page reads version ${newest}: write it again with this ierf.` };
  }
  if (!KINDS[meta.kind]) return { error: `Unknown dashboard kind ${JSON.stringify(meta.kind)}.` };
  if (!data.sets.length || data.sets.every((s) => !s.items || !s.items.length)) {
    return { error: "This dashboard is empty: it holds no concepts or latents." };
  }
  return { data };
}

class App {
  constructor(data) {
    this.data = data;
    this.kind = KINDS[data.dashboard.kind];
    this.state = { set: 0, q: "", f: "", sort: this.kind.sorts[0][0], sel: null };
    this.nodeIndex = new Map();        // graph node id → [set, item index]
    data.sets.forEach((set, si) => set.items.forEach((item, i) => {
      if (item.node) this.nodeIndex.set(item.node, [si, i]);
    }));
    this.grid = new VirtualGrid(document.getElementById("grid"), (i) => this.card(i), CARD_W, CARD_H);
    this.controls();
    this.readHash();
    this.apply(true);
  }

  get set() { return this.data.sets[this.state.set]; }

  card(i) {
    const card = this.kind.card(this.set.items[i], this.set);
    card.addEventListener("click", () => this.select(i));
    card.addEventListener("keydown", (e) => { if (e.key === "Enter") this.select(i); });
    return card;
  }

  controls() {
    const d = this.data;
    document.getElementById("title").textContent = d.dashboard.title || "ierf dashboard";
    document.getElementById("set-name").textContent = this.kind.setName;
    document.getElementById("filter-name").textContent = this.kind.filterName;
    const setSelect = document.getElementById("set-select");
    d.sets.forEach((s, i) => setSelect.append(el("option", { value: String(i) },
      `${s.id} (${s.items.length})`)));
    document.getElementById("set-box").hidden = d.sets.length < 2;
    setSelect.addEventListener("change", () => {
      Object.assign(this.state, { set: Number(setSelect.value), f: "", sel: null });
      this.apply(true);
    });
    const sort = document.getElementById("sort");
    for (const [v, label] of this.kind.sorts) sort.append(el("option", { value: v }, label));
    sort.addEventListener("change", () => { this.state.sort = sort.value; this.apply(false); });
    document.getElementById("filter").addEventListener("change", (e) => {
      this.state.f = e.target.value;
      this.apply(false);
    });
    const search = document.getElementById("search");
    search.addEventListener("input", () => { this.state.q = search.value; this.apply(false); });
    document.addEventListener("keydown", (e) => {
      if (e.key === "/" && document.activeElement !== search) { e.preventDefault(); search.focus(); }
      if (e.key === "Escape") this.select(null);
    });
    for (const w of d.dashboard.warnings || []) notice(w);
    window.addEventListener("hashchange", () => { if (this.readHash()) this.apply(true); });
  }

  /** Filter, search and sort the set's items; redraw the grid (and the panel). */
  apply(newSet) {
    const set = this.set;
    if (newSet) {
      const filter = document.getElementById("filter");
      filter.replaceChildren(...this.kind.filters(set).map(([v, label]) => el("option", { value: v }, label)));
      filter.value = this.state.f;
      if (filter.value !== this.state.f) this.state.f = "";
      document.getElementById("set-select").value = String(this.state.set);
      document.getElementById("subtitle").textContent = describe(set, this.data.dashboard.kind);
    }
    document.getElementById("sort").value = this.state.sort;
    document.getElementById("search").value = this.state.q;
    const q = this.state.q.trim().toLowerCase();
    const keyOf = [];
    set.items.forEach((item, i) => {
      if (q && !this.kind.searchText(item).includes(q)) return;
      let key = this.kind.sortValue(item, this.state.sort);
      if (this.state.f) {
        const v = this.kind.filterValue(item, this.state.f, set);
        if (v === undefined) return;
        if (this.data.dashboard.kind === "concepts") key = v;     // by importance for the class
      }
      keyOf.push([i, key === null || key === undefined || Number.isNaN(key) ? -Infinity : key]);
    });
    keyOf.sort((a, b) => b[1] - a[1] || a[0] - b[0]);
    const items = keyOf.map(([i]) => i);
    this.grid.setItems(items);
    document.body.dataset.items = String(items.length);
    document.getElementById("status").textContent =
      `${items.length} of ${set.items.length} ${this.data.dashboard.kind} shown` +
      (items.length ? "" : " — nothing matches the search or filter");
    this.select(this.state.sel, true);
  }

  /** Open item `i` of the current set in the panel (null: the set's overview). */
  select(i, quiet) {
    const set = this.set;
    if (i !== null && (i < 0 || i >= set.items.length)) i = null;
    this.state.sel = i;
    this.grid.select(i);
    const panel = document.getElementById("panel");
    if (i === null) {
      panel.replaceChildren(el("h2", null, set.id), facts(overview(set, this.data.dashboard.kind)),
        el("p", { class: "muted" }, "Click a card to see its details; / searches, Escape closes."));
    } else {
      panel.replaceChildren(...this.kind.panel(set.items[i], set, this).filter((n) => n));
      panel.scrollTop = 0;
    }
    if (!quiet || i !== null) this.writeHash();
  }

  /** Open item `i` of set `s` (from a graph edge). */
  open(s, i) {
    if (s !== this.state.set) {
      Object.assign(this.state, { set: s, f: "", q: "", sel: i });
      this.apply(true);
    } else {
      this.select(i);
    }
  }

  writeHash() {
    const p = new URLSearchParams();
    if (this.state.set) p.set("set", String(this.state.set));
    if (this.state.q) p.set("q", this.state.q);
    if (this.state.f) p.set("f", this.state.f);
    if (this.state.sort !== this.kind.sorts[0][0]) p.set("sort", this.state.sort);
    if (this.state.sel !== null) p.set("sel", String(this.set.items[this.state.sel].k));
    const hash = p.toString();
    if (location.hash.slice(1) !== hash) history.replaceState(null, "", hash ? `#${hash}` : location.pathname + location.search);
  }

  /** Read the URL fragment into the state; true when it changed. */
  readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    const before = JSON.stringify(this.state);
    const s = Number(p.get("set") || 0);
    this.state.set = Number.isInteger(s) && s >= 0 && s < this.data.sets.length ? s : 0;
    this.state.q = p.get("q") || "";
    this.state.f = p.get("f") || "";
    const sort = p.get("sort");
    this.state.sort = this.kind.sorts.some(([v]) => v === sort) ? sort : this.kind.sorts[0][0];
    const k = p.get("sel");
    const at = k === null ? -1 : this.set.items.findIndex((item) => String(item.k) === k);
    this.state.sel = at < 0 ? null : at;
    return JSON.stringify(this.state) !== before;
  }
}

function describe(set, kind) {
  if (kind === "concepts") {
    return `${set.model} · ${set.layer} · ${set.method} · K = ${set.n_concepts} concepts of ${set.n_channels} channels · ${set.n_pfvs} atlas PFVs`;
  }
  return [set.model, set.layer, `${set.tokens} tokens`, `${set.items.length} latents`].filter((x) => x).join(" · ");
}

function overview(set, kind) {
  if (kind === "concepts") {
    return [["model", set.model], ["layer", set.layer], ["extractor", set.method],
      ["concepts", String(set.n_concepts)], ["atlas", set.atlas], ["atlas PFVs", String(set.n_pfvs)],
      ["graph", set.graph || "none"]];
  }
  const mean = (items, key) => {
    const v = items.map((i) => i.stats[key]).filter((x) => x !== null && x !== undefined);
    return v.length ? fmt(v.reduce((a, b) => a + b, 0) / v.length) : "–";
  };
  const patch = set.items.filter((i) => !i.cls), cls = set.items.filter((i) => i.cls);
  return [["model", set.model || "unknown (no --basis)"], ["layer", set.layer || "–"],
    ["tokens", set.tokens], ["latents", `${set.items.length} (${cls.length} CLS)`],
    patch.length ? ["patch latents: mass outside 3×3", `${mean(patch, "outside")} (uniform ${mean(patch, "chance_outside")})`,
      "mean over patch latents of the iERF mass outside the firing token's neighbourhood"] : null,
    cls.length ? ["CLS latents: iERF spread", `${mean(cls, "spread")} patches`] : null,
    ["insertion", set.insertion ? `${set.insertion.steps} steps: ${set.insertion.rankings.join(", ")}` : "not computed"]];
}

function start() {
  const { data, error } = readPayload();
  if (error) { fatal(error); return; }
  IMAGES = data.images;
  document.getElementById("loading").remove();
  const app = new App(data);
  window.ierfDashboard = app;
  document.body.dataset.state = "ready";
  document.body.dataset.kind = data.dashboard.kind;
}

start();
