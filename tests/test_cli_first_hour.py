"""What a new user meets first: several images per call, method options, output formats,
clear device errors, `python -m ierf`, the method and layer listings, and warnings instead of
silently wrong inputs (16-bit and transparent images, a toy model given a photo, AttnLRP on a
CNN)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import ierf
from ierf.cli import main
from ierf.data.images import load_image
from ierf.data.synthetic import generate
from ierf.local.registry import METHODS


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> list:
    """Three synthetic 64 × 64 scenes as PNG files in a folder (toy-resnet's own domain)."""
    folder = tmp_path_factory.mktemp("scenes")
    images = generate(3, seed=0, split="test").images
    for i, im in enumerate(images):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            folder / f"scene{i}.png")
    return folder


def test_several_images_and_a_folder_in_one_call(scenes, tmp_path, capsys) -> None:
    out = tmp_path / "maps"
    argv = ["explain", str(scenes), "camera", "--model", "toy-resnet", "--method",
            "integrated-gradients", "--opt", "n_steps=4", "--batch-size", "2", "-o", str(out)]
    with pytest.warns(UserWarning, match="camera .* outside what it knows"):
        assert main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 4 and sorted(p.name for p in out.iterdir()) == [
        "camera_integrated-gradients.png", *[f"scene{i}_integrated-gradients.png"
                                            for i in range(3)]]
    # the batched CLI gives each image the class the model predicts for it alone
    model = ierf.load_model("toy-resnet")
    for i, line in enumerate(printed[:3]):
        x = model.preprocess(load_image(scenes / f"scene{i}.png"))
        assert model.class_names[int(model(x).argmax())] in line


def test_output_format_follows_the_suffix(tmp_path) -> None:
    for suffix, magic in ((".jpg", b"\xff\xd8"), (".pdf", b"%PDF"), (".png", b"\x89PNG")):
        out = tmp_path / f"c{suffix}"
        assert main(["explain", "camera", "--model", "toy-vgg", "--method", "gradient",
                     "-o", str(out)]) == 0
        assert out.read_bytes()[:len(magic)] == magic


@pytest.mark.parametrize(("argv", "message"), [
    (["--opt", "n_steps"], "expected KEY=VALUE"),
    (["--opt", "n_stepz=4"], "has no option 'n_stepz'; its options: "),
    (["-o", "x.gif"], "cannot write a figure as '.gif'"),
    (["--device", "tpu9"], "unknown device 'tpu9'"),
])
def test_bad_options_are_one_line_errors(tmp_path, capsys, argv, message) -> None:
    argv = ["explain", "camera", "--model", "toy-vgg", "--method", "integrated-gradients",
            *[a if a != "x.gif" else str(tmp_path / a) for a in argv]]
    try:
        code = main(argv)
    except SystemExit as e:                     # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_cuda_without_a_gpu_says_so(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["explain", "camera", "--device", "cuda"])
    assert "CUDA is not available here" in capsys.readouterr().err


def test_python_dash_m_ierf() -> None:
    done = subprocess.run([sys.executable, "-m", "ierf", "methods"], capture_output=True,
                          text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == len(METHODS)
    kinds = {line.split()[0]: line.split()[1] for line in lines}
    assert kinds["transmm"] == "vit" and kinds["srd"] == "cnn/vit"


def test_layers_show_grid_channels_and_defaults(capsys) -> None:
    assert main(["layers", "efficientnet_lite0"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert not any(" Identity " in line for line in out)          # pass-through left out
    high = ierf.load_model("efficientnet_lite0", weights=None).layer_at_stride(8)
    row = next(line for line in out if line.split()[0] == high)
    assert "28×28" in row and "srd-high" in row
    assert main(["layers", "efficientnet_lite0", "--all"]) == 0
    assert len(capsys.readouterr().out.splitlines()) > len(out)


def test_sixteen_bit_and_transparent_images_are_converted_and_said(tmp_path) -> None:
    ramp = np.tile(np.linspace(0, 65535, 32).astype(np.uint16), (8, 1))
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    with pytest.warns(UserWarning, match="scaled to 8 bits"):
        im = np.asarray(load_image(tmp_path / "deep.png"))
    assert im[0, 0, 0] == 0 and im[0, -1, 0] == 255 and 120 < im[0, 16, 0] < 140
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:2, :, 3] = 255                            # top half opaque red, bottom transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    with pytest.warns(UserWarning, match="transparent pixels flattened onto white"):
        im = np.asarray(load_image(tmp_path / "alpha.png"))
    assert tuple(im[0, 0]) == (200, 0, 0) and tuple(im[3, 0]) == (255, 255, 255)


def test_attnlrp_on_a_cnn_warns() -> None:
    with pytest.warns(UserWarning, match="grad-x-input's numbers"):
        ierf.attributor("attnlrp", ierf.load_model("toy-resnet"))


def test_layers_as_module_objects_and_uint8_tensors() -> None:
    """pytorch-grad-cam habit: ``layer=net.layer2``; a uint8 tensor gets a clear error."""
    model = ierf.load_model("toy-resnet")
    x = model.normalize(generate(1, seed=0, split="test").images)
    by_name = ierf.attributor("gradcam", model, layer="layer2").attribute(x)
    by_module = ierf.attributor("gradcam", model, layer=model.net.layer2).attribute(x)
    torch.testing.assert_close(by_module, by_name)
    srd = ierf.attributor("srd-low", model, layer=model.net.layer3)
    assert srd._layer == "layer3"
    with pytest.raises(ierf.IerfError, match="not part of"):
        ierf.attributor("gradcam", model, layer=torch.nn.Conv2d(3, 3, 1))
    with pytest.raises(ierf.IerfError, match="expected a float tensor, got torch.uint8"):
        ierf.attributor("gradient", model).attribute((x * 50).to(torch.uint8))


def test_ctrl_c_is_one_line_and_the_build_resumes(tmp_path) -> None:
    """SIGINT during an atlas build: exit status 130, one line instead of a traceback, and
    the atlas is consistent (verify passes) and completes when the command runs again."""
    import signal
    import time

    command = [sys.executable, "-m", "ierf", "atlas", "build", "--model", "toy-resnet",
               "--images", "benchmark", "--n", "24", "--batch-size", "4", "--layers", "layer3",
               "--out", str(tmp_path / "atlas")]
    build = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not list((tmp_path / "atlas").glob("**/*.safetensors")) and build.poll() is None:
        assert time.monotonic() < deadline, "no shard written in 4 minutes"
        time.sleep(0.2)
    build.send_signal(signal.SIGINT)
    _, err = build.communicate(timeout=120)
    if build.returncode == 0:
        pytest.skip("the build finished before the interrupt arrived")
    assert build.returncode == 130, err
    assert "ierf: interrupted" in err and "Traceback" not in err, err
    ierf = [sys.executable, "-m", "ierf"]
    verify = subprocess.run([*ierf, "atlas", "verify", str(tmp_path / "atlas")], check=False,
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    again = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    info = subprocess.run([*ierf, "atlas", "info", str(tmp_path / "atlas")], check=False,
                          capture_output=True, text=True, timeout=300)
    assert "24 of 24 done" in info.stdout, info.stdout
