"""The `ierf` command line, in process and as the installed console script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from ierf.cli import main


def test_explain_writes_overlay_and_raw_map(tmp_path, capsys):
    out = tmp_path / "chelsea.png"
    assert main(["explain", "chelsea", "-o", str(out), "--save-tensor"]) == 0
    assert "Egyptian cat" in capsys.readouterr().out
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 400
    raw = load_file(str(tmp_path / "chelsea.safetensors"))["map"]
    assert raw.shape == (224, 224) and raw.abs().sum() > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chelsea.png", "chelsea.safetensors"]


def test_explain_with_a_named_target(tmp_path, capsys):
    assert main(["explain", "coffee", "--target", "tripod", "-o", str(tmp_path / "c.png")]) == 0
    assert "tripod" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["explain", "chelsea", "--model", "resnet5O"], "unknown model"),
    (["explain", "no-such-image.jpg"], "no image file"),
    (["explain", "chelsea", "--target", "1000"], "out of range"),
    (["explain", "chelsea", "--method", "gradcamm"], "unknown method"),
    (["layers", "nope"], "unknown model"),
])
def test_bad_input_exits_2_with_a_message(tmp_path, capsys, argv, message):
    assert main([*argv, *(["-o", str(tmp_path / "x.png")] if argv[0] == "explain" else [])]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())  # nothing half-written


def test_listing_commands(capsys):
    assert main(["models"]) == 0
    assert "efficientnet_lite0  (offline weights)" in capsys.readouterr().out
    assert main(["methods"]) == 0
    assert "gradient" in [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert main(["layers", "toy-resnet"]) == 0
    assert "layer3" in [line.split()[0] for line in capsys.readouterr().out.splitlines()]


def test_console_script_is_installed(tmp_path):
    exe = Path(sys.executable).with_name("ierf")
    assert exe.is_file(), "the ierf console script is not installed beside python; pip install -e ."
    run = subprocess.run([exe, "explain", "camera", "-o", str(tmp_path / "cam.png")], check=False,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "tripod" in run.stdout and (tmp_path / "cam.png").is_file()


def test_written_files_get_the_usual_permissions(tmp_path):
    import os

    out = tmp_path / "c.png"
    assert main(["explain", "camera", "--method", "gradient", "-o", str(out), "--save-tensor"]) == 0
    umask = os.umask(0)
    os.umask(umask)
    for written in (out, out.with_suffix(".safetensors")):  # safetensors recreates its file
        assert written.stat().st_mode & 0o777 == 0o666 & ~umask


def test_help_needs_no_torch_and_names_every_concept_method() -> None:
    # `ierf --help` and every subcommand's help start without importing torch (lazy imports)
    code = ("import sys; from ierf.cli import _parser; p = _parser(); "
            "p.parse_args(['concepts', 'fit', 'a', '--layer', 'l']); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    import ierf
    from ierf.cli.concepts import METHOD_NAMES
    from ierf.concepts.fitting import METHODS

    assert METHOD_NAMES == tuple(METHODS)
    assert sorted(ierf.__all__) == sorted(ierf._EXPORTS)
    assert all(getattr(ierf, name) is not None for name in ierf.__all__)
