"""CAFE's code path on the paper's kind of model, structurally, with random weights (no
download): timm's CLIP ViT-L/14 architecture (the image tower of OpenAI's CLIP: pre-LayerNorm
``norm_pre``, QuickGELU, width 1024, 14-pixel patches; one block here, at 56 × 56 pixels so
the test stays small) and a timm ViT from the zoo (``vit_tiny_patch16_224``). Checked: token
shapes, the CLS token, memory-bounded streaming, and latent iERFs of patch and CLS latents."""

from __future__ import annotations

import pytest
import torch

from ierf.cafe.attribution import latent_ierfs
from ierf.cafe.insertion import auc, insertion_curves, patch_scores
from ierf.cafe.latents import latent_activations, select_pairs, token_positions
from ierf.cafe.streaming import TensorImages
from ierf.cafe.training import SAETrainer, SAETraining
from ierf.concepts.basis import ConceptBasis
from ierf.models import load_model
from ierf.models.model import Model, Preprocessing, vit_layout

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: see conftest.py

timm = pytest.importorskip("timm")


@pytest.fixture(scope="module")
def clip_l14() -> Model:
    torch.manual_seed(0)
    net = timm.create_model("vit_large_patch14_clip_quickgelu_224", pretrained=False, depth=1,
                            img_size=56, num_classes=0).eval()
    prefix, grid = vit_layout(net)
    prep = Preprocessing((56, 56), (0.481, 0.458, 0.408), (0.269, 0.261, 0.276))
    return Model(net, "clip-vit-l14-1block", ["embedding"], prep, num_prefix_tokens=prefix,
                 patch_grid=grid)


def train(model: Model, x: torch.Tensor, layer: str, out, config: SAETraining
          ) -> tuple[SAETrainer, dict[str, ConceptBasis]]:
    trainer = SAETrainer(model, TensorImages(x, "noise"), [layer], out, ["patch", "cls"],
                         config)
    return trainer, trainer.run(progress=False)


def ground_both(model: Model, bases: dict[str, ConceptBasis], x: torch.Tensor) -> None:
    """AttnLRP iERFs of a patch latent and a CLS latent: image-sized, finite, not all zero;
    CLS pairs sit at position −1 and have no activation ranking; insertion ends at 1."""
    size = tuple(x.shape[-2:])
    for name, basis in bases.items():
        acts = latent_activations(model, basis, x)
        layer_pfvs = model.pfvs(x[:1], basis.layer)[basis.layer]
        positions = token_positions(basis, layer_pfvs)
        latents = (acts > 0).any(1).sum(0).topk(2).indices
        pairs = select_pairs(acts, positions, latents, 1)
        assert len(pairs) >= 1, name
        maps = latent_ierfs(model, basis, x, pairs, "attnlrp")
        assert maps.shape == (len(pairs), *size) and torch.isfinite(maps).all()
        assert maps.abs().sum((1, 2)).gt(0).all(), name
        assert bool(pairs.is_cls.all()) == (basis.tokens == "cls")
        activation = patch_scores(model, basis, x, pairs, "activation")
        assert activation.isnan().all() == (basis.tokens == "cls")
        curves = insertion_curves(model, basis, x, pairs, patch_scores(model, basis, x, pairs,
                                                                      maps), "zero", steps=4)
        assert torch.allclose(curves[:, -1], torch.ones(len(pairs)), atol=1e-3)
        assert torch.isfinite(auc(curves)).all()


def test_clip_vit_l14_architecture(clip_l14, tmp_path) -> None:
    x = torch.randn(8, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    pfvs = clip_l14.pfvs(x[:2], "blocks.0")["blocks.0"]
    assert pfvs.vectors.shape == (2, 16, 1024) and pfvs.prefix.shape == (2, 1, 1024)
    config = SAETraining(method="topk-sae", n_concepts=32, k=4, batch_size=8,
                         buffer_tokens=32, image_batch=2)
    trainer, bases = train(clip_l14, x, "blocks.0", tmp_path, config)
    # memory-bounded: 128 patch tokens went through a 32-token buffer, every one used once
    assert trainer.buffers[("blocks.0", "patch")].data.shape == (32, 1024)
    assert bases["blocks.0-patch"].provenance["steps"] == 8 * 16 // 8
    assert bases["blocks.0-cls"].provenance["steps"] == 1
    ground_both(clip_l14, bases, x[:4])


def test_timm_vit_from_the_zoo(tmp_path) -> None:
    torch.manual_seed(0)
    model = load_model("vit_tiny_patch16_224", weights=None)
    assert (model.num_prefix_tokens, model.patch_grid) == (1, (14, 14))
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(2))
    config = SAETraining(method="topk-sae", n_concepts=16, k=2, batch_size=2,
                         buffer_tokens=98, image_batch=1)
    trainer, bases = train(model, x, "blocks.2", tmp_path, config)
    assert trainer.buffers[("blocks.2", "patch")].data.shape == (98, 192)
    assert bases["blocks.2-patch"].provenance["steps"] == 2 * 196 // 2
    ground_both(model, bases, x)
