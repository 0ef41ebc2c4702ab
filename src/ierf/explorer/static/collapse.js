// Supernodes (GIG App. B): a layer's concept nodes collapsed into a cluster of the bisecting
// k-means split tree of its basis, and expanded again. payload.hierarchy holds each layer's
// tree: `parents` of its 2K − 1 tree nodes (node k < K is concept k, node K + s the cluster
// split at step s, −1 above the root) and `sizes` (PFVs in each). A collapsed tree node P is
// one node, id "layer:P", standing for the graph's concepts of that layer whose basis index
// lies under P. Its edges, class importances and mean coefficient are the sums of its
// members' — exact for ICAT, which is IG over the coefficients summed over positions (IERF
// Eq. 14; see ierf.graph.hierarchy) — and its frequency is min(1, Σ frequency).

const SUPER_THUMBS = 6; // member thumbnails a supernode carries (the most influential first)
const SUMMED_LINK_FIELDS = ["weight", "weight_a", "weight_b"];

class Hierarchy {
  /** The split trees `trees` (layer → {parents, sizes}) and the graph's raw `nodes`. */
  constructor(trees, nodes) {
    this.trees = new Map();
    for (const [layer, tree] of Object.entries(trees || {})) {
      const parents = tree.parents;
      const children = parents.map(() => []);
      parents.forEach((p, i) => { if (p >= 0) children[p].push(i); });
      this.trees.set(layer, { parents, sizes: tree.sizes, K: (parents.length + 1) / 2, children,
        count: new Array(parents.length).fill(0) });
    }
    this.concepts = new Map(); // node id → {layer, index} of the concepts in a tree
    for (const raw of nodes) {
      const t = this.trees.get(raw.layer_name);
      const i = raw.basis_index;
      if (raw.kind !== "concept" || !t || !Number.isInteger(i) || i < 0 || i >= t.parents.length) continue;
      this.concepts.set(raw.node_id, { layer: raw.layer_name, index: i });
      this.climb(t, i, (j) => { t.count[j]++; }); // graph concepts under every tree node
    }
  }

  has(layer) {
    return this.trees.has(layer);
  }

  /** Call fn on tree node i and each of its ancestors, up to the root. */
  climb(t, i, fn) {
    for (let j = i, steps = 0; j >= 0 && steps < t.parents.length; j = t.parents[j], steps++) fn(j);
  }

  key(layer, index) {
    return `${layer}:${index}`;
  }

  /** {layer, index} of a cluster key "layer:P" (an internal tree node over at least two of
   *  the graph's concepts), or null. */
  cluster(key) {
    const at = String(key).lastIndexOf(":");
    const layer = String(key).slice(0, at);
    const index = Number(String(key).slice(at + 1));
    const t = this.trees.get(layer);
    if (at < 0 || !t || !Number.isInteger(index) || index < t.K || index >= t.parents.length) return null;
    return t.count[index] >= 2 ? { layer, index } : null;
  }

  /** {layer, index} of a concept node id or a cluster key, or null. */
  unit(id) {
    return this.concepts.get(id) || this.cluster(id);
  }

  /** The collapsed cluster (a key of `chosen`) that node or cluster `id` lies in, or null. */
  ownerOf(id, chosen) {
    const u = this.unit(id);
    if (!u || !chosen.size) return null;
    let found = null;
    this.climb(this.trees.get(u.layer), u.index, (j) => {
      if (chosen.has(this.key(u.layer, j))) found = this.key(u.layer, j);
    });
    return found;
  }

  /** The cluster unit `u` collapses into: its first ancestor holding more of the graph's
   *  concepts than `u` (−1 when `u` already holds all of its layer's). */
  parentCluster(u) {
    const t = this.trees.get(u.layer);
    const own = t.count[u.index];
    let p = t.parents[u.index];
    while (p >= 0 && t.count[p] <= own) p = t.parents[p];
    return p;
  }

  /** `keys` as a set of collapsed clusters: valid, none inside another, sorted. */
  normalize(keys) {
    const valid = new Set(keys.filter((k) => this.cluster(k)));
    return [...valid].filter((k) => {
      const u = this.cluster(k);
      let inside = false;
      this.climb(this.trees.get(u.layer), u.index, (j) => {
        if (j !== u.index && valid.has(this.key(u.layer, j))) inside = true;
      });
      return !inside;
    }).sort();
  }

  /** Collapsed clusters after collapsing node or cluster `id` into its parent cluster:
   *  {keys, key} (key: the new cluster), or null when there is none above it. */
  collapse(id, keys) {
    const u = this.unit(id);
    const p = u ? this.parentCluster(u) : -1;
    if (p < 0) return null;
    const key = this.key(u.layer, p);
    return { keys: this.normalize([...keys, key]), key };
  }

  /** Collapsed clusters after collapsing every one of `ids` (a layer's drawn concepts and
   *  clusters) one level. */
  collapseAll(ids, keys) {
    const more = ids.map((id) => this.unit(id)).filter(Boolean)
      .map((u) => [u, this.parentCluster(u)]).filter(([, p]) => p >= 0)
      .map(([u, p]) => this.key(u.layer, p));
    return this.normalize([...keys, ...more]);
  }

  /** Collapsed clusters after expanding, level by level, those that hold concept `id`
   *  until it is a node of its own (the rest of each cluster stays collapsed). */
  reveal(id, keys) {
    let out = keys;
    for (let owner = this.ownerOf(id, new Set(out)); owner; owner = this.ownerOf(id, new Set(out))) {
      const next = this.expand(owner, out);
      if (next.join(" ") === out.join(" ")) break;
      out = next;
    }
    return out;
  }

  /** Collapsed clusters after expanding cluster `key` one level: its two sub-clusters
   *  (descending past splits that leave all of its graph concepts on one side), each a
   *  cluster again if it holds at least two of them, else its one concept. */
  expand(key, keys) {
    const u = this.cluster(key);
    if (!u) return keys;
    const t = this.trees.get(u.layer);
    let node = u.index;
    for (;;) {
      const full = t.children[node].find((c) => t.count[c] === t.count[node]);
      if (full === undefined) break;
      node = full;
    }
    const parts = t.children[node].filter((c) => t.count[c] >= 2).map((c) => this.key(u.layer, c));
    return this.normalize([...keys.filter((k) => k !== key), ...parts]);
  }
}

/** `payload` with the clusters `keys` collapsed: each one node (see the top of the file),
 *  edges between the same two nodes summed, routes through the new nodes. */
function collapsedPayload(payload, hierarchy, keys) {
  if (!keys.length) return payload;
  const chosen = new Set(keys);
  const graph = payload.graph;
  const owner = new Map();
  const groups = new Map();
  for (const raw of graph.nodes) {
    const key = hierarchy.ownerOf(raw.node_id, chosen);
    if (!key) continue;
    owner.set(raw.node_id, key);
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(raw);
  }
  if (!owner.size) return payload;
  const images = { ...(payload.images || {}) };
  const nodes = [];
  for (const raw of graph.nodes) {
    const key = owner.get(raw.node_id);
    if (!key) nodes.push(raw);
    else if (groups.get(key)[0] === raw) {
      const members = groups.get(key);
      nodes.push(supernode(key, hierarchy.cluster(key), members, hierarchy));
      images[key] = [...members].sort((a, b) => (b.influence || 0) - (a.influence || 0))
        .flatMap((m) => (images[m.node_id] || []).slice(0, 1)).slice(0, SUPER_THUMBS);
    }
  }
  const merged = new Map();
  for (const raw of graph.links) {
    const source = owner.get(raw.source) || raw.source;
    const target = owner.get(raw.target) || raw.target;
    const pair = `${source}\n${target}`;
    if (!merged.has(pair)) merged.set(pair, { source, target });
    const link = merged.get(pair);
    for (const f of SUMMED_LINK_FIELDS) {
      const sum = addKnown(link[f], raw[f]);
      if (sum !== null) link[f] = sum;
    }
  }
  const routes = (Array.isArray(payload.routes) ? payload.routes : []).map((r) => ({
    ...r, nodes: r.nodes.map((id) => owner.get(id) || id) }));
  return { ...payload, graph: { ...graph, nodes, links: [...merged.values()] }, images, routes };
}

/** The raw node of cluster `u` (key `key`) over its `members` (raw concept nodes). */
function supernode(key, u, members, hierarchy) {
  const top = members.reduce((a, b) => ((b.influence || 0) > (a.influence || 0) ? b : a));
  const label = (n) => (n.clerp === undefined || n.clerp === null ? n.node_id : String(n.clerp));
  const sum = (f) => members.reduce((s, m) => s + (typeof m[f] === "number" ? m[f] : 0), 0);
  const vectors = members.map((m) => m.importance).filter(Array.isArray);
  const importance = vectors.length ? vectors[0].map((_, j) =>
    vectors.reduce((s, v) => s + (typeof v[j] === "number" ? v[j] : 0), 0)) : null;
  const only = new Set(members.map((m) => m.diff_only || ""));
  return {
    node_id: key, jsNodeId: key, feature: u.index, layer: top.layer, layer_name: u.layer,
    kind: "concept",
    clerp: members.length > 1 ? `${label(top)} (+${members.length - 1})` : label(top),
    importance,
    influence: importance ? importance.reduce((s, v) => s + Math.abs(v), 0) : sum("influence"),
    activation: sum("activation"),
    frequency: Math.min(1, sum("frequency")),
    basis_index: u.index,
    diff_only: only.size === 1 && !only.has("") ? [...only][0] : undefined,
    supernode: {
      members: members.map((m) => m.node_id),
      labels: members.map(label),
      pfvs: hierarchy.trees.get(u.layer).sizes[u.index],
    },
  };
}

/** a + b where a missing value (null, undefined) is nothing; null when both are. */
function addKnown(a, b) {
  const known = (x) => typeof x === "number";
  if (!known(a) && !known(b)) return null;
  return (known(a) ? a : 0) + (known(b) ? b : 0);
}
