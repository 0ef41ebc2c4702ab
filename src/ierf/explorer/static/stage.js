// The graph stage: drag to pan, wheel to zoom (shift-wheel pans), hover for the tooltip,
// click to select, ctrl-click (⌘-click) to pin. Nodes are found from their SVG group or,
// when drawn on the canvas, from the layout.

/** Pan (drag), zoom (wheel), hover, click and ctrl-click on the stage. */
function setupStage(app) {
  const stage = app.stage;
  /** The node under the pointer: its SVG group, or its box on the canvas. */
  const nodeOf = (e) => {
    const g = e.target instanceof Element ? e.target.closest(".node") : null;
    if (g) return app.model.byId.get(g.getAttribute("data-id"));
    const r = stage.getBoundingClientRect();
    return app.geometry ? nodeAt(app.geometry, (e.clientX - r.left - app.t.x) / app.t.k,
      (e.clientY - r.top - app.t.y) / app.t.k) : null;
  };
  const resize = () => {
    const dpr = window.devicePixelRatio || 1;
    app.canvas.width = Math.max(1, Math.round(stage.clientWidth * dpr));
    app.canvas.height = Math.max(1, Math.round(stage.clientHeight * dpr));
    app.canvas.style.width = `${stage.clientWidth}px`;
    app.canvas.style.height = `${stage.clientHeight}px`;
    if (app.view) {
      app.syncNodes();
      app.drawNow();
    }
  };
  resize();
  new ResizeObserver(resize).observe(stage);
  let drag = null;
  stage.addEventListener("pointerdown", (e) => {
    if (e.button !== 0) return;
    drag = { x: e.clientX, y: e.clientY, tx: app.t.x, ty: app.t.y, moved: false };
  });
  window.addEventListener("pointermove", (e) => {
    if (drag) {
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (Math.abs(dx) + Math.abs(dy) > 3) drag.moved = true;
      if (drag.moved) {
        app.t.x = drag.tx + dx;
        app.t.y = drag.ty + dy;
        app.applyTransform();
        showTooltip(null);
        return;
      }
    }
    if (!stage.contains(e.target)) return;
    const n = nodeOf(e);
    app.hover(n);
    showTooltip(n, e.clientX, e.clientY);
  });
  window.addEventListener("pointerup", () => {
    setTimeout(() => { drag = null; }, 0); // the click that follows still sees `moved`
  });
  stage.addEventListener("pointerleave", () => {
    app.hover(null);
    showTooltip(null);
  });
  stage.addEventListener("click", (e) => {
    if (drag && drag.moved) return;
    const n = nodeOf(e);
    if (n && (e.ctrlKey || e.metaKey)) app.togglePin(n.id);
    else app.select(n ? n.id : null);
  });
  stage.addEventListener("wheel", (e) => {
    e.preventDefault();
    if (e.shiftKey) { // pan up and down (browsers may report shift-wheel as deltaX)
      app.t.y -= e.deltaY || e.deltaX;
      app.applyTransform();
      return;
    }
    const r = stage.getBoundingClientRect();
    app.zoomAt(Math.exp(-e.deltaY * 0.0015), e.clientX - r.left, e.clientY - r.top);
  }, { passive: false });
}
