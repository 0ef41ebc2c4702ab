"""What the browser tests share: Debian's Chromium, driven headless by Playwright's Python
package through its executable path (Playwright's own browser download is not used), and
the screenshots kept when IERF_EXPLORER_SHOTS=DIR is set. Importing this module skips the
importing test module when Chromium or Playwright is absent; .ci/run installs Chromium."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = next((found for name in (os.environ.get("IERF_CHROMIUM"), "chromium",
                                    "chromium-browser", "google-chrome")
                 if name and (found := shutil.which(name))), None)
if CHROMIUM is None:
    pytest.skip("no Chromium to test the pages in: `apt-get install chromium` (.ci/run "
                "does), or point IERF_CHROMIUM at a Chromium binary", allow_module_level=True)
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="Playwright's Python package drives Chromium here: "
    "pip install -e '.[test]'")

SHOTS = os.environ.get("IERF_EXPLORER_SHOTS")
#: ``page.evaluate(TIMED_STEP, [selector, value])``: set a control, fire its event, and
#: return the milliseconds until the next frame has been drawn
TIMED_STEP = """async ([sel, value]) => {
    const e = document.querySelector(sel);
    const t = performance.now();
    e.value = String(value);
    e.dispatchEvent(new Event(e.tagName === "SELECT" ? "change" : "input", {bubbles: true}));
    await new Promise(r => requestAnimationFrame(() => setTimeout(r, 0)));
    return performance.now() - t; }"""
VIEWPORT = {"width": 1400, "height": 900}


def launch() -> Iterator[Any]:
    """Headless Chromium for a module-scoped ``browser`` fixture."""
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def shot(page: Any, name: str) -> None:
    """Keep a screenshot of ``page`` as ``$IERF_EXPLORER_SHOTS/<name>.png`` when asked."""
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"))
