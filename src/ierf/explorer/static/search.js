// Free-text search over node labels and ids: every word of the query must occur (case
// does not matter). Concepts collapsed into a supernode (collapse.js) are searched too.
// Results list below the box; Enter or a click selects one, which is then drawn even if
// pruning had hidden it, and centred; a collapsed concept is first expanded out of its
// supernode (its "supernode" button selects the supernode instead).

const SEARCH_SHOWN = 20;

/** What matches `query` in `model`, best first (label starts with it, then by influence):
 *  entries {node, member}: `node` a drawn-able node, `member` null, or {id, label} of a
 *  concept collapsed into supernode `node`. */
function searchNodes(model, query) {
  const words = query.toLowerCase().split(/\s+/).filter(Boolean);
  if (!words.length) return [];
  const q = query.trim().toLowerCase();
  const hit = (label, id) => {
    const text = `${label}\n${id}`.toLowerCase();
    return words.every((w) => text.includes(w));
  };
  const found = [];
  for (const node of model.nodes) {
    if (hit(node.label, node.id)) found.push({ node, member: null });
    const group = node.raw.supernode;
    if (!group) continue;
    group.members.forEach((id, i) => {
      const label = String(group.labels[i]);
      if (hit(label, id)) found.push({ node, member: { id, label } });
    });
  }
  const starts = (r) => {
    const { label, id } = r.member || r.node;
    return label.toLowerCase().startsWith(q) || id.toLowerCase() === q ? 0 : 1;
  };
  return found.sort((a, b) => starts(a) - starts(b) || b.node.influence - a.node.influence);
}

function setupSearch(app) {
  const input = document.getElementById("search");
  const list = document.getElementById("search-results");
  let results = [];
  let cursor = 0;

  const item = (r, i) => {
    const pick = (fn) => (e) => { e.preventDefault(); e.stopPropagation(); fn(); };
    const li = el("li", { class: i === cursor ? "active" : "",
      "data-id": (r.member || r.node).id, onmousedown: pick(() => choose(r)) });
    if (!r.member) {
      li.append(el("span", { class: `badge kind-${r.node.kind}` }, r.node.kind), " ",
        r.node.label, " ", el("code", {}, r.node.id));
      return li;
    }
    li.setAttribute("data-super", r.node.id);
    li.title = `collapsed into supernode ${r.node.label}: Enter or click expands it`;
    li.append(el("span", { class: "badge kind-concept" }, "in supernode"), " ",
      el("button", { class: "small super-pick", title: `select the supernode ${r.node.label}`,
        onmousedown: pick(() => choose({ node: r.node, member: null })) }, r.node.id), " ",
      el("code", {}, r.member.id), " ", r.member.label);
    return li;
  };
  const show = () => {
    results = searchNodes(app.model, input.value);
    cursor = 0;
    app.setMatches(new Set(results.map((r) => r.node)));
    list.replaceChildren();
    if (!input.value.trim()) {
      list.hidden = true;
      return;
    }
    if (!results.length) {
      list.append(el("li", { class: "muted" }, "no node matches"));
    }
    results.slice(0, SEARCH_SHOWN).forEach((r, i) => list.append(item(r, i)));
    if (results.length > SEARCH_SHOWN) {
      list.append(el("li", { class: "muted" }, `… ${results.length - SEARCH_SHOWN} more`));
    }
    list.hidden = false;
  };
  const choose = (r) => {
    list.hidden = true;
    input.blur();
    if (r.member) app.setCollapsed(app.hierarchy.reveal(r.member.id, app.state.collapsed));
    app.select((r.member || r.node).id, true);
  };
  const move = (step) => {
    const items = [...list.querySelectorAll("li[data-id]")];
    if (!items.length) return;
    cursor = (cursor + step + items.length) % items.length;
    items.forEach((li, i) => li.classList.toggle("active", i === cursor));
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
