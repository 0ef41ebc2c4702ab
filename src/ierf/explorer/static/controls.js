// The bar of controls: class, edge threshold, top-k parents, nodes per layer, routes,
// fit and the exports; and the keyboard (/ to search, Esc to close the panel).

function setupControls(app) {
  const classes = document.getElementById("class-select");
  for (const c of app.model.classes) classes.append(el("option", { value: c.node.id }, c.node.label));
  const fill = (select, choices) => choices.forEach((v) =>
    select.append(el("option", { value: v }, v === 0 ? "all" : String(v))));
  fill(document.getElementById("topk"), TOPK_CHOICES);
  fill(document.getElementById("per-layer"), PER_LAYER_CHOICES);
  syncControls(app);
  const on = (id, event, fn) => document.getElementById(id).addEventListener(event, fn);
  on("class-select", "change", (e) => app.setClass(e.target.value || null));
  on("threshold", "input", (e) => {
    document.getElementById("threshold-value").textContent = pct(Number(e.target.value));
    app.set("threshold", Number(e.target.value));
  });
  on("topk", "change", (e) => app.set("topK", Number(e.target.value)));
  on("per-layer", "change", (e) => {
    app.set("perLayer", Number(e.target.value));
    app.fit(); // a new drawing: show all of it
  });
  on("routes", "change", (e) => app.set("routes", e.target.checked));
  on("fit", "click", () => app.fit());
  on("export-svg", "click", () => exportSvg(app));
  on("export-png", "click", () => exportPng(app));
  on("export-json", "click", () => exportPinned(app));
  on("clear-pins", "click", () => app.set("pins", []));
  document.getElementById("routes-toggle").hidden = !app.model.routes.length;
  document.addEventListener("keydown", (e) => {
    const typing = e.target instanceof HTMLInputElement || e.target instanceof HTMLSelectElement;
    if (e.key === "/" && !typing) {
      e.preventDefault();
      document.getElementById("search").focus();
    } else if (e.key === "Escape" && !typing) {
      app.select(null);
    }
  });
}

/** Put the state's values into the controls (also for choices not in the lists). */
function syncControls(app) {
  const s = app.state;
  const ensure = (select, value) => {
    if (![...select.options].some((o) => o.value === String(value))) {
      select.append(el("option", { value }, value === 0 ? "all" : String(value)));
    }
    select.value = String(value);
  };
  document.getElementById("class-select").value = s.cls || "";
  document.getElementById("threshold").value = String(s.threshold);
  document.getElementById("threshold-value").textContent = pct(s.threshold);
  ensure(document.getElementById("topk"), s.topK);
  ensure(document.getElementById("per-layer"), s.perLayer);
  document.getElementById("routes").checked = s.routes;
}
