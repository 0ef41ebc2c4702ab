"""Heavy libraries load only when a command uses them.

On the 2-core development machine torch takes ~3 s to import, torchvision ~2.7 s more (it
imports ``torch._dynamo``), scikit-learn ~2 s, timm ~1 s, Captum and matplotlib ~0.7 s each:
``ierf graph info`` took 12.8 s before they were imported where used, 6 s after. Importing
every ierf package and loading a toy model must pull in none of them.
"""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("torchvision", "timm", "sklearn", "captum", "zennit", "matplotlib", "pytorch_grad_cam",
         "scipy", "skimage", "open_clip")

CODE = f"""
import sys
import ierf, ierf.cli, ierf.atlas, ierf.bench, ierf.cafe, ierf.concepts, ierf.diagnose
import ierf.explorer, ierf.fact, ierf.graph, ierf.local.registry, ierf.metrics
ierf.load_model("toy-resnet")
print(",".join(m for m in {HEAVY!r} if m in sys.modules))
"""


def test_ierf_and_a_toy_model_import_no_heavy_library() -> None:
    done = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True,
                          check=True, timeout=300)
    assert done.stdout.strip() == "", f"imported at start-up: {done.stdout.strip()}"


def test_a_photo_still_preprocesses_as_torchvision_does() -> None:
    """The torchvision calls moved into ``Model.preprocess`` give the same tensor as
    torchvision's own ``to_tensor → resize → center_crop → normalize``."""
    import torch
    import torchvision.transforms.functional as TF

    import ierf

    model = ierf.load_model("efficientnet_lite0")
    image = ierf.load_image("chelsea")
    p = model.preprocessing
    x = TF.resize(TF.to_tensor(image), list(p.input_size),
                  interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    x = TF.normalize(TF.center_crop(x, list(p.input_size)).clamp(0, 1), p.mean, p.std)
    assert torch.equal(model.preprocess(image), x[None])
