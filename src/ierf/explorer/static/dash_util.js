// Small helpers of the dashboards. Everything from the data is put into the page as text
// (textContent, attribute values), never as markup.

// An error anywhere is shown in the page (never a blank or silently frozen page).
window.addEventListener("error", (e) => {
  const message = `The dashboard hit an error: ${e.message}`;
  if (document.body.dataset.state === "ready") notice(message, "error");
  else fatal(message);
});

const SVG_NS = "http://www.w3.org/2000/svg";
let IMAGES = [];                       // the payload's picture URLs, by index

/** An HTML element: `attrs` are attributes or, for `on*` keys, listeners; `children` are
 *  nodes or strings (added as text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
}

/** A number for people: 3 significant digits. */
function fmt(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  const abs = Math.abs(x);
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) return x.toExponential(2);
  return Number(x.toPrecision(3)).toString();
}

function pct(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return `${Math.round(x * 1000) / 10}%`;
}

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
