// A virtualised grid of fixed-size cards: only the rows in view (plus a margin) are in the
// DOM, so thousands of items (K = 8·C concepts) scroll as fast as a few dozen.

class VirtualGrid {
  /** `scroller`: the scrolling element; `render(i)`: the card element of item `i`. */
  constructor(scroller, render, cardWidth, cardHeight) {
    this.scroller = scroller;
    this.render = render;
    this.cardWidth = cardWidth;
    this.cardHeight = cardHeight;
    this.spacer = scroller.querySelector("#grid-spacer");
    this.items = [];
    this.shown = new Map();            // item → its card element
    this.selected = null;
    this.pending = false;
    scroller.addEventListener("scroll", () => this.schedule(), { passive: true });
    new ResizeObserver(() => this.schedule()).observe(scroller);
  }

  get columns() {
    return Math.max(1, Math.floor(this.scroller.clientWidth / this.cardWidth));
  }

  /** Show `items` (item ids, in order), scrolled to the top. */
  setItems(items) {
    this.items = items;
    for (const card of this.shown.values()) card.remove();
    this.shown.clear();
    this.scroller.scrollTop = 0;
    this.update();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.update(); });
  }

  /** Put the cards of the rows in view into the DOM, and take the others out. */
  update() {
    const cols = this.columns;
    const rows = Math.ceil(this.items.length / cols);
    this.spacer.style.height = `${rows * this.cardHeight}px`;
    this.spacer.style.width = `${cols * this.cardWidth}px`;
    const top = this.scroller.scrollTop;
    const first = Math.max(0, Math.floor(top / this.cardHeight) - 1);
    const last = Math.min(rows, Math.ceil((top + this.scroller.clientHeight) / this.cardHeight) + 1);
    const wanted = new Map();
    for (let i = first * cols; i < Math.min(this.items.length, last * cols); i++) {
      wanted.set(this.items[i], i);
    }
    for (const [item, card] of this.shown) {
      if (!wanted.has(item)) { card.remove(); this.shown.delete(item); }
    }
    for (const [item, i] of wanted) {
      let card = this.shown.get(item);
      if (!card) {
        card = this.render(item);
        card.dataset.item = String(item);
        card.classList.toggle("selected", item === this.selected);
        this.spacer.append(card);
        this.shown.set(item, card);
      }
      card.style.transform = `translate(${(i % cols) * this.cardWidth}px, ${Math.floor(i / cols) * this.cardHeight}px)`;
    }
    document.body.dataset.rendered = String(this.shown.size);
  }

  /** Mark `item` selected and scroll it into view when it is in the list. */
  select(item) {
    this.selected = item;
    for (const [i, card] of this.shown) card.classList.toggle("selected", i === item);
    const at = this.items.indexOf(item);
    if (at < 0) return;
    const y = Math.floor(at / this.columns) * this.cardHeight;
    if (y < this.scroller.scrollTop || y + this.cardHeight > this.scroller.scrollTop + this.scroller.clientHeight) {
      this.scroller.scrollTop = Math.max(0, y - this.cardHeight);
    }
    this.update();
  }
}
