// Small helpers of the dashboards (util.js, the graph page's, comes first: el, svgEl, fmt, pct).
// Everything from the data is put into the page as text
// (textContent, attribute values), never as markup.

// An error anywhere is shown in the page (never a blank or silently frozen page).
window.addEventListener("error", (e) => {
  const message = `The dashboard hit an error: ${e.message}`;
  if (document.body.dataset.state === "ready") notice(message, "error");
  else fatal(message);
});

let IMAGES = [];                       // the payload's picture URLs, by index

/** An <img> of picture `index` of the payload (a placeholder when there is none). */
function picture(index, alt, cls) {
  const url = IMAGES[index];
  if (typeof url !== "string" || !(url.startsWith("data:image/") || !/^[a-z][a-z0-9+.-]*:/i.test(url))) {
    return el("div", { class: `placeholder ${cls || ""}`, title: "no picture" }, "no image");
  }
  return el("img", { src: url, alt: alt || "", class: cls || "", loading: "lazy", decoding: "async" });
}

/** A definition list of [term, value] rows. */
function facts(rows) {
  return el("dl", { class: "facts" }, rows.filter((r) => r).flatMap(([k, v, title]) =>
    [el("dt", { title: title || null }, k), el("dd", null, v)]));
}

/** Horizontal bars of [label, value] (signed), scaled to the largest |value|. */
function bars(rows) {
  const peak = Math.max(1e-30, ...rows.map((r) => Math.abs(r[1])));
  return el("ul", { class: "bars" }, rows.map(([label, value]) => el("li", null,
    el("span", { class: "bar-label", title: label }, label),
    el("span", { class: "bar-track" }, el("span", {
      class: `bar ${value < 0 ? "neg" : "pos"}`,
      style: `width:${(100 * Math.abs(value) / peak).toFixed(1)}%` })),
    el("span", { class: "value" }, fmt(value)))));
}

function notice(message, kind) {
  document.getElementById("notices").append(el("div", { class: `notice ${kind || ""}` }, message));
}

/** Replace the page's content with one message (bad or missing data). */
function fatal(message) {
  document.body.dataset.state = "error";
  const grid = document.getElementById("grid");
  if (grid) grid.replaceChildren(el("div", { class: "stage-message error" }, message));
  const loading = document.getElementById("loading");
  if (loading) loading.remove();
}
