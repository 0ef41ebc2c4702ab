"""Every code block of the README runs, as written, in the order a reader meets them.

Shell blocks run under bash with the test's interpreter first on ``PATH`` (``ierf`` and
``.venv/bin/ierf`` are the installed console script); the set-up block (creating the venv)
and the test command itself are the only lines not run here — ``.ci/run`` runs exactly those.
Without ``--slow`` the README's atlas runs on 24 instead of 100 benchmark images and
``bench graph`` on 8 instead of 16 of them (the same commands, a smaller real run).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"^```(\w+)\n(.*?)^```", re.DOTALL | re.MULTILINE)
#: lines that set up the environment or run this very suite: .ci/run does these
NOT_HERE = ("python3 -m venv", "-m pytest")


def blocks(language: str) -> list[str]:
    return [code for lang, code in BLOCK.findall(README.read_text()) if lang == language]


def shell_commands(code: str) -> list[str]:
    """The commands of a bash block, continuation lines joined, set-up lines left out."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line for line in joined.splitlines()
            if line.strip() and not any(s in line for s in NOT_HERE)]


#: the smaller run: README text → what runs without ``--slow``
SMALL = {"--n 100": "--n 24", "--layers layer2,layer3 --n 16": "--layers layer2,layer3 --n 8"}


def run_shell(command: str, cwd: Path, small: bool) -> None:
    for readme, smaller in SMALL.items() if small else ():
        command = command.replace(readme, smaller)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "2"}
    command = command.replace(".venv/bin/", "")
    done = subprocess.run(["bash", "-c", command], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert done.returncode == 0, f"`{command}` failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, request) -> Path:
    """A folder where every shell block of the README has run (the atlas the Python
    blocks read, the pictures the commands write)."""
    cwd = tmp_path_factory.mktemp("readme")
    small = not request.config.getoption("--slow")
    for code in blocks("bash"):
        for command in shell_commands(code):
            run_shell(command, cwd, small)
    return cwd


def test_the_readme_has_the_blocks_we_run() -> None:
    assert len(blocks("python")) >= 4 and len(blocks("bash")) >= 3
    quick_start = shell_commands(blocks("bash")[0])
    assert quick_start == [".venv/bin/ierf explain chelsea -o chelsea.png"]


def test_shell_blocks_write_what_they_say(workdir: Path) -> None:
    assert (workdir / "chelsea.png").stat().st_size > 10_000
    assert (workdir / "atlas" / "manifest.sqlite").is_file()
    assert (workdir / "cards" / "cards-layer3.png").is_file()
    assert (workdir / "atlas" / "bench-concepts-layer3.md").is_file()
    assert (workdir / "graph" / "graph.json").is_file() and (workdir / "graph" / "graph.png").is_file()
    assert (workdir / "graph" / "explain-image0" / "routes.png").is_file()
    assert "ierf.concept-graph" in (workdir / "graph.html").read_text()
    assert (workdir / "atlas" / "bench-graph" / "layer2-layer3" / "curves.png").is_file()


def test_python_blocks_run_in_order(workdir: Path, monkeypatch) -> None:
    monkeypatch.chdir(workdir)
    namespace: dict[str, object] = {}
    for i, code in enumerate(blocks("python")):
        try:
            exec(compile(code, f"README python block {i + 1}", "exec"), namespace)  # noqa: S102
        except Exception as e:  # noqa: BLE001 — name the block that failed
            pytest.fail(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{code}")
