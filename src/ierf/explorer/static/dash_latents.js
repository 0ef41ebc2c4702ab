// The CAFE latent dashboard: per latent its top images, the activation overlay (firing
// token boxed) beside the iERF overlay, non-locality, insertion curves; CLS latents marked.

const RANKING_COLORS = { ierf: "#c0392b", activation: "#2e6fbd", random: "#888888" };

const LATENTS = {
  setName: "Grounding",
  filterName: "Show",
  sorts: [["top_activation", "top activation"], ["fires_on", "fires on"],
    ["outside", "non-locality (mass outside)"], ["k", "index"]],

  filters() {
    return [["", "all latents"], ["cls", "CLS latents"], ["patch", "patch latents"],
      ["nonlocal", "non-local (outside > chance)"]];
  },

  filterValue(item, value) {
    if (value === "cls") return item.cls ? 1 : undefined;
    if (value === "patch") return item.cls ? undefined : 1;
    const s = item.stats;
    return s.outside !== null && s.chance_outside !== null && s.outside > s.chance_outside ? s.outside : undefined;
  },

  sortValue(item, key) {
    if (key === "k") return -item.k;
    if (key === "outside") return item.stats.outside ?? item.stats.outside_self;
    return item[key];
  },

  searchText(item) {
    return `${item.label} ${item.k} ${item.pairs.map((p) => p.image).join(" ")}`.toLowerCase();
  },

  card(item, set) {
    const s = item.stats;
    return el("div", { class: `card${item.cls ? " cls" : ""}`, role: "button", tabindex: "0" },
      el("div", { class: "card-head" },
        el("span", { class: "card-label", title: item.label }, item.label),
        item.cls ? el("span", { class: "badge", title: "a CLS-token latent: no firing patch" }, "CLS") : null),
      el("div", { class: "strip", title: "top images: activation (left), iERF (right)" },
        item.pairs.slice(0, 2).map((p) => [overlayFigure(set, p, "act", item.cls, "thumb"),
          overlayFigure(set, p, "ierf", item.cls, "thumb")])),
      el("div", { class: "card-foot" },
        el("span", null, `fires on ${pct(item.fires_on)}`),
        el("span", { title: "iERF mass outside the firing token's 3×3 (chance in brackets)" },
          item.cls ? `spread ${fmt(s.spread)}` : `out ${fmt(s.outside)} (${fmt(s.chance_outside)})`)));
  },

  panel(item, set) {
    const s = item.stats;
    const nodes = [
      el("h2", { class: "item-label" }, item.label,
        item.cls ? el("span", { class: "badge" }, "CLS token") : null),
      el("div", { class: "item-sub" }, [set.model, set.layer, `${set.tokens} tokens`].filter((x) => x).join(" · ")),
      item.cls ? el("p", { class: "muted" }, "A CLS latent has no firing patch: only its iERF places its evidence in the image.") : null,
      facts([
        ["fires on", pct(item.fires_on), "share of the scanned images where it is active"],
        ["mean activation", fmt(item.mean_activation)],
        ["top activation", fmt(item.top_activation)],
        item.cls ? null : ["iERF mass outside 3×3", `${fmt(s.outside)} (uniform ${fmt(s.chance_outside)})`,
          "share of positive iERF mass outside the firing token's neighbourhood, mean over top images"],
        item.cls ? null : ["firing token → iERF centre", `${fmt(s.distance)} patches`],
        ["iERF spread", `${fmt(s.spread)} patches`, "mass-weighted distance from the iERF's own centre"],
        ["outside own peak's 3×3", fmt(s.outside_self)],
      ]),
      el("h3", null, "Top images: activation (left) and iERF (right)"),
      el("div", { class: "pairs" }, item.pairs.map((p) => el("div", { class: "pair-row" },
        overlayFigure(set, p, "act", item.cls, "thumb-large"),
        overlayFigure(set, p, "ierf", item.cls, "thumb-large"),
        el("div", { class: "pair-caption" },
          el("span", { class: "file", title: p.image }, `image ${p.image}`),
          el("span", null, `z = ${fmt(p.activation)}`),
          item.cls ? null : el("span", null, `outside ${fmt(p.stats.outside)}`),
          p.auc ? el("span", null, `AUC iERF ${fmt(p.auc.ierf)} · act ${fmt(p.auc.activation)}`) : null)))),
    ];
    if (set.insertion) nodes.push(el("h3", null, "Insertion (mean over top images)"), insertionChart(item, set));
    else nodes.push(el("p", { class: "muted" }, "No insertion curves: `ierf cafe report` draws them with --basis and --images."));
    if (item.panel !== null && item.panel !== undefined) {
      nodes.push(el("h3", null, "Panel (PNG)"), picture(item.panel, `panel of ${item.label}`, "panel-png"));
    }
    return nodes;
  },
};

/** A pair's overlay, with the firing token boxed on the activation map (not for CLS). */
function overlayFigure(set, pair, which, cls, size) {
  const what = which === "act" ? (cls ? "image (CLS: no firing patch)" : "activation") : "iERF";
  const frame = el("div", { class: "frame", title: `${what} · ${pair.image}` },
    picture(pair[which], `${what} of ${pair.image}`, size));
  if (which === "act" && !cls && pair.position !== null && pair.position >= 0 && set.grid) {
    const [h, w] = set.grid;
    const r = Math.floor(pair.position / w);
    const c = pair.position % w;
    frame.append(el("span", { class: "token-box",
      style: `left:${(100 * c / w).toFixed(3)}%;top:${(100 * r / h).toFixed(3)}%;` +
        `width:${(100 / w).toFixed(3)}%;height:${(100 / h).toFixed(3)}%` }));
  }
  return frame;
}

/** Mean insertion curve per ranking as an SVG chart (z(canvas) / z(image) against the
 *  fraction of patches inserted), with the mean AUC per ranking. */
function insertionChart(item, set) {
  const W = 300, H = 170, L = 34, B = 24, T = 8, R = 8;
  const svg = svgEl("svg", { class: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H, role: "img" });
  const curves = {};
  let lo = 0, hi = 1;
  for (const r of set.insertion.rankings) {
    const rows = item.pairs.map((p) => p.curves && p.curves[r]).filter((c) => c && c.every((v) => v !== null));
    if (!rows.length) continue;
    curves[r] = rows[0].map((_, i) => rows.reduce((a, c) => a + c[i], 0) / rows.length);
    lo = Math.min(lo, ...curves[r]);
    hi = Math.max(hi, ...curves[r]);
  }
  const x = (f) => L + f * (W - L - R);
  const y = (v) => T + (1 - (v - lo) / (hi - lo || 1)) * (H - T - B);
  svg.append(svgEl("line", { x1: x(0), x2: x(1), y1: y(1), y2: y(1), class: "ref" }),
    svgEl("line", { x1: x(0), x2: x(0), y1: y(hi), y2: y(lo), class: "axis" }),
    svgEl("line", { x1: x(0), x2: x(1), y1: y(lo), y2: y(lo), class: "axis" }));
  const label = (tx, ty, text, anchor) => {
    const t = svgEl("text", { x: tx, y: ty, "text-anchor": anchor || "middle", class: "tick" });
    t.textContent = text;
    svg.append(t);
  };
  label(x(0.5), H - 4, "fraction of patches inserted");
  label(L - 4, y(1) + 3, "1", "end");
  label(L - 4, y(lo) + 3, fmt(lo), "end");
  for (const [r, c] of Object.entries(curves)) {
    const points = c.map((v, i) => `${x(i / (c.length - 1)).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
    svg.append(svgEl("polyline", { points, class: `curve ${r}`, stroke: RANKING_COLORS[r] || "#000" }));
  }
  const legend = el("ul", { class: "legend" }, Object.keys(curves).map((r) => el("li", null,
    el("span", { class: "swatch", style: `background:${RANKING_COLORS[r] || "#000"}` }),
    `${r} (AUC ${fmt(item.auc ? item.auc[r] : null)})`)));
  return el("div", { class: "insertion" }, svg, legend);
}
