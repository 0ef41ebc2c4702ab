// The graph as the page uses it: nodes with their edges, columns (layers, input side left,
// classes right), classes, routes; pruning (which nodes and edges are drawn) and a class's
// ancestry. Built once from the embedded JSON; pruning reruns on every change of state.

const FORMAT = "ierf.concept-graph";

/** Why `payload` cannot be shown (a sentence), or null when it can. */
function problemWith(payload) {
  if (!payload || typeof payload !== "object" || !payload.graph) {
    return "This page holds no graph data. Export it again with `ierf graph show`.";
  }
  const graph = payload.graph;
  const ierf = graph.metadata && graph.metadata.ierf;
  if (!ierf || ierf.format !== FORMAT) {
    return `This file is not an ierf concept graph (metadata.ierf.format is not "${FORMAT}").`;
  }
  const version = ierf.format_version;
  if (!SUPPORTED_VERSIONS.includes(version)) {
    const newest = Math.max(...SUPPORTED_VERSIONS);
    return typeof version === "number" && version > newest
      ? `This graph has format version ${version}, newer than this explorer reads ` +
          `(${newest}). Export it with a newer ierf.`
      : `This graph has format version ${JSON.stringify(version)}; this explorer reads ` +
          `version ${newest}. Rebuild the graph with this ierf.`;
  }
  if (!Array.isArray(graph.nodes) || !Array.isArray(graph.links)) {
    return "This graph has no list of nodes or links.";
  }
  return null;
}

/** The page's model of `payload` (checked by problemWith first). */
function buildModel(payload) {
  const graph = payload.graph;
  const ierf = graph.metadata.ierf || {};
  const images = payload.images || {};
  const nodes = graph.nodes.map((raw, index) => ({
    id: raw.node_id,
    raw,
    index,
    kind: raw.kind,
    label: raw.clerp === undefined || raw.clerp === null ? raw.node_id : String(raw.clerp),
    col: Number(raw.layer),
    layerName: raw.layer_name || `column ${raw.layer}`,
    influence: typeof raw.influence === "number" ? raw.influence : 0,
    images: Array.isArray(images[raw.node_id]) ? images[raw.node_id] : [],
    in: [],
    out: [],
  }));
  const byId = new Map(nodes.map((n) => [n.id, n]));
  const links = [];
  const maxAbs = new Map(); // per column pair: the strongest |weight|
  const pair = (l) => l.source.col * 65536 + l.target.col;
  for (const raw of graph.links) {
    const source = byId.get(raw.source);
    const target = byId.get(raw.target);
    if (!source || !target) continue;
    const weight = typeof raw.weight === "number" ? raw.weight : 0;
    const link = { source, target, weight, abs: Math.abs(weight), norm: 0, raw };
    links.push(link);
    source.out.push(link);
    target.in.push(link);
    maxAbs.set(pair(link), Math.max(maxAbs.get(pair(link)) || 0, link.abs));
  }
  // |weight| relative to the strongest edge between the same two columns
  for (const l of links) {
    const m = maxAbs.get(pair(l));
    l.norm = m > 0 ? l.abs / m : 0;
  }
  const byStrength = (a, b) => b.abs - a.abs;
  for (const n of nodes) {
    n.in.sort(byStrength);
    n.out.sort(byStrength);
  }
  const nCols = nodes.reduce((m, n) => Math.max(m, n.col + 1), 0);
  const columns = [];
  for (let c = 0; c < nCols; c++) {
    const mine = nodes.filter((n) => n.col === c);
    const name = (Array.isArray(ierf.layers) && ierf.layers[c]) || (mine[0] && mine[0].layerName);
    columns.push({
      index: c,
      name: String(name || `column ${c}`),
      concepts: mine.filter((n) => n.kind === "concept").sort((a, b) => b.influence - a.influence),
      always: mine.filter((n) => n.kind !== "concept"), // error and class nodes
      size: mine.length,
    });
  }
  const classIndex = Array.isArray(ierf.classes) ? ierf.classes : [];
  const classes = nodes
    .filter((n) => n.kind === "class")
    .map((n) => ({ node: n, column: classIndex.indexOf(n.raw.feature) }));
  const routes = (Array.isArray(payload.routes) ? payload.routes : [])
    .map((r, i) => ({
      index: i,
      nodes: r.nodes.map((id) => byId.get(id)).filter(Boolean),
      strength: r.strength,
      weights: r.weights || [],
    }))
    .filter((r) => r.nodes.length >= 2);
  return { graph, meta: graph.metadata, ierf, nodes, byId, links, columns, classes, routes };
}

/** "B - A" when the graph is the difference of two graphs (`ierf diagnose`'s diff graph,
 *  `ierf graph show A --diff B`), else null. */
function diffOf(model) {
  const d = model.ierf.metadata && model.ierf.metadata.diff;
  return typeof d === "string" && d ? d : null;
}

/** The nodes and edges drawn for `state`: per column, error and class nodes and the
 *  `perLayer` most influential concepts, plus the `forced` node ids; among them the edges
 *  whose |weight| is at least `threshold` of their layer pair's strongest, at most `topK`
 *  per target node, strongest first. */
function prune(model, state, forced) {
  const kept = new Set();
  const limit = state.perLayer > 0 ? state.perLayer : Infinity;
  for (const col of model.columns) {
    col.concepts.slice(0, limit).forEach((n) => kept.add(n));
    col.always.forEach((n) => kept.add(n));
  }
  for (const id of forced) {
    const n = model.byId.get(id);
    if (n) kept.add(n);
  }
  const links = [];
  const k = state.topK > 0 ? state.topK : Infinity;
  for (const target of kept) {
    let taken = 0;
    for (const l of target.in) { // strongest first
      if (taken >= k) break;
      if (l.norm < state.threshold || !kept.has(l.source)) continue;
      links.push(l);
      taken++;
    }
  }
  const nodes = model.nodes.filter((n) => kept.has(n));
  return { nodes, kept, links };
}

/** The nodes with a path of drawn edges to `classNode` (itself included). */
function ancestry(view, classNode) {
  const parents = new Map();
  for (const l of view.links) {
    if (!parents.has(l.target)) parents.set(l.target, []);
    parents.get(l.target).push(l.source);
  }
  const seen = new Set([classNode]);
  const todo = [classNode];
  while (todo.length) {
    for (const p of parents.get(todo.pop()) || []) {
      if (!seen.has(p)) {
        seen.add(p);
        todo.push(p);
      }
    }
  }
  return seen;
}
