"""Nothing ierf reads is unpickled: every torch.load passes weights_only=True."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_torch_load_is_weights_only() -> None:
    calls = []
    for path in [*ROOT.glob("src/**/*.py"), *ROOT.glob("scripts/*.py"),
                 *ROOT.glob("benchmarks/*.py")]:
        text = path.read_text()
        for match in re.finditer(r"torch\.load\(", text):
            calls.append((path.relative_to(ROOT), "weights_only=True" in _call(text, match.end())))
    assert calls, "expected at least one torch.load (bench attack reads its cached maps)"
    assert [str(p) for p, safe in calls if not safe] == []


def _call(text: str, start: int) -> str:
    """The arguments of the call whose opening parenthesis ends at ``start``."""
    depth = 1
    for i in range(start, len(text)):
        depth += {"(": 1, ")": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i]
    return text[start:]
