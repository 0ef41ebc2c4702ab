// Free-text search over node labels and ids: every word of the query must occur (case
// does not matter). Results list below the box; Enter or a click selects one, which is
// then drawn even if pruning had hidden it, and centred.

const SEARCH_SHOWN = 20;

/** The nodes of `model` matching `query`, best first (label starts with it, then by
 *  influence). */
function searchNodes(model, query) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return [];
  const q = query.trim().toLowerCase();
  const found = model.nodes.filter((n) => {
    const text = `${n.label}\n${n.id}`.toLowerCase();
    return words.every((w) => text.includes(w));
  });
  const starts = (n) => (n.label.toLowerCase().startsWith(q) || n.id.toLowerCase() === q ? 0 : 1);
  return found.sort((a, b) => starts(a) - starts(b) || b.influence - a.influence);
}

function setupSearch(app) {
  const input = document.getElementById("search");
  const list = document.getElementById("search-results");
  let results = [];
  let cursor = 0;

  const show = () => {
    results = searchNodes(app.model, input.value);
    cursor = 0;
    app.setMatches(new Set(results));
    list.replaceChildren();
    if (!input.value.trim()) {
      list.hidden = true;
      return;
    }
    if (!results.length) {
      list.append(el("li", { class: "muted" }, "no node matches"));
    }
    results.slice(0, SEARCH_SHOWN).forEach((n, i) => {
      list.append(el("li", { class: i === cursor ? "active" : "", "data-id": n.id,
        onmousedown: (e) => { e.preventDefault(); choose(n); } },
      el("span", { class: `badge kind-${n.kind}` }, n.kind), " ", n.label, " ",
      el("code", {}, n.id)));
    });
    if (results.length > SEARCH_SHOWN) {
      list.append(el("li", { class: "muted" }, `… ${results.length - SEARCH_SHOWN} more`));
    }
    list.hidden = false;
  };
  const choose = (n) => {
    list.hidden = true;
    input.blur();
    app.select(n.id, true);
  };
  const move = (step) => {
    const items = [...list.querySelectorAll("li[data-id]")];
    if (!items.length) return;
    cursor = (cursor + step + items.length) % items.length;
    items.forEach((item, i) => item.classList.toggle("active", i === cursor));
  };
  input.addEventListener("input", show);
  input.addEventListener("focus", () => input.value.trim() && show());
  input.addEventListener("blur", () => { list.hidden = true; });
  input.addEventListener("keydown", (e) => {
    if (e.key === "ArrowDown") { e.preventDefault(); move(1); }
    else if (e.key === "ArrowUp") { e.preventDefault(); move(-1); }
    else if (e.key === "Enter" && results.length) { e.preventDefault(); choose(results[cursor]); }
    else if (e.key === "Escape") {
      input.value = "";
      show();
      input.blur();
    }
  });
}
