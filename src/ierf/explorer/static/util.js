// Small helpers shared by the explorer's scripts. Everything from the data is put into the
// page as text (textContent, attribute values), never as markup.

// An error anywhere is shown in the page (never a blank or silently frozen page).
window.addEventListener("error", (e) => {
  const message = `The explorer hit an error: ${e.message}`;
  if (document.body.dataset.state === "ready") {
    document.getElementById("notices").append(el("div", { class: "notice error" }, message));
  } else {
    fatal(message);
  }
});

const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = { pos: "#c0392b", neg: "#2e6fbd", route: "#111111" };

/** An HTML element: `attrs` are attributes (`class`, `title`, ...) or, for `on*` keys,
 *  event listeners; `children` are nodes or strings (added as text). */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  setAttrs(node, attrs);
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

/** An SVG element with attributes. */
function svgEl(tag, attrs) {
  const node = document.createElementNS(SVG_NS, tag);
  setAttrs(node, attrs);
  return node;
}

function setAttrs(node, attrs) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      node.addEventListener(key.slice(2), value);
    } else {
      node.setAttribute(key, value === true ? "" : String(value));
    }
  }
}

/** A number for people: 3 significant digits, signed when asked. */
function fmt(x, signed) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  if (typeof x !== "number") return String(x);
  const abs = Math.abs(x);
  let text;
  if (abs !== 0 && (abs < 1e-3 || abs >= 1e5)) text = x.toExponential(2);
  else text = Number(x.toPrecision(3)).toString();
  return signed && x > 0 ? "+" + text : text;
}

function pct(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return `${Math.round(x * 1000) / 10}%`;
}

function clamp(x, lo, hi) {
  return Math.max(lo, Math.min(hi, x));
}

/** `text` cut to `n` characters, with an ellipsis when cut. */
function truncate(text, n) {
  text = String(text);
  return text.length > n ? text.slice(0, n - 1) + "…" : text;
}

function edgeColor(weight) {
  return weight >= 0 ? COLORS.pos : COLORS.neg;
}

/** Offer `blob` as a download called `name` (works from file://, no server). */
function download(name, blob) {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/** A name for downloaded files, from the graph's slug. */
function fileStem(text) {
  return String(text || "graph").replace(/[^A-Za-z0-9_.-]+/g, "-").slice(0, 60) || "graph";
}
