"""CAFE's code path on OpenCLIP image towers (the paper's CLIP ViT-L/14 is
``openclip/ViT-L-14``), structurally, with random weights (no download): a two-block
OpenCLIP architecture at 32 × 32 pixels registered with open_clip and loaded through
``ierf.load_model``. Checked: open_clip's batch-first token layout and CLS token against its
own forward pass, AttnLRP's exact conservation on it, memory-bounded streaming, and latent
iERFs of patch and CLS latents with the insertion test."""

from __future__ import annotations

import json
import sys

import pytest
import torch

from ierf.cafe.attribution import latent_ierfs
from ierf.cafe.insertion import auc, insertion_curves, patch_scores
from ierf.cafe.latents import latent_activations, select_pairs, token_positions
from ierf.cafe.streaming import TensorImages
from ierf.cafe.training import SAETrainer, SAETraining
from ierf.errors import IerfError
from ierf.local.attention import trace
from ierf.local.attnlrp import AttnLRP
from ierf.local.registry import attributor
from ierf.models import load_model
from ierf.models.model import Model

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: see conftest.py

open_clip = pytest.importorskip("open_clip")

ARCH = "ierf-test-ViT-tiny"
LAYER = "transformer.resblocks.1"  # the last block: its tokens are what open_clip pools
CONFIG = {"embed_dim": 16, "quick_gelu": True,  # OpenAI CLIP's QuickGELU, as ViT-L/14's
          "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
          "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2,
                       "layers": 1}}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> Model:
    path = tmp_path_factory.mktemp("openclip") / f"{ARCH}.json"
    path.write_text(json.dumps(CONFIG))
    open_clip.add_model_config(path)
    torch.manual_seed(0)
    return load_model(f"openclip/{ARCH}", weights=None)


def images(n: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(seed))


def test_layout_and_cls_token(clip) -> None:
    assert (clip.num_prefix_tokens, clip.patch_grid, clip.num_classes) == (1, (4, 4), 16)
    assert clip.preprocessing.mean == tuple(open_clip.OPENAI_DATASET_MEAN)
    assert clip.encoder_layer() == "transformer.resblocks.0"  # input of the last block
    x = images(2, 1)
    pfvs = clip.pfvs(x, LAYER)[LAYER]
    assert pfvs.vectors.shape == (2, 16, 64) and pfvs.prefix.shape == (2, 1, 64)
    visual = clip.net  # open_clip's own readout: pooled CLS embedding and patch tokens
    visual.output_tokens = True
    try:
        with torch.no_grad():
            pooled, tokens = visual(x)
    finally:
        visual.output_tokens = False
    torch.testing.assert_close(visual.ln_post(pfvs.prefix[:, 0]) @ visual.proj, pooled)
    torch.testing.assert_close(visual.ln_post(pfvs.vectors), tokens)
    torch.testing.assert_close(clip(x), pooled)

def test_attnlrp_conserves_on_open_clip(clip) -> None:
    """With zero biases (linear, LayerNorm β, CLS, positions) CP-LRP's input relevance sums
    to the explained embedding dimension exactly: open_clip's ``nn.MultiheadAttention`` and
    QuickGELU (``x · σ(1.702 x)``, uniform rule on the product) are covered by the rules."""
    assert isinstance(clip.net.transformer.resblocks[0].mlp.gelu, open_clip.transformer.QuickGELU)
    state = {k: v.clone() for k, v in clip.net.state_dict().items()}
    try:
        with torch.no_grad():
            for name, p in clip.net.named_parameters():
                if name.endswith("bias") or name in ("class_embedding", "positional_embedding"):
                    p.zero_()
        x = images(2, 2)
        relevance = AttnLRP(clip, attention="cp").relevance(x, 3)["input"].sum((1, 2, 3))
        torch.testing.assert_close(relevance, clip(x)[:, 3].detach(), rtol=1e-4, atol=1e-5)
    finally:
        clip.net.load_state_dict(state)


def test_attention_maps_match_pytorch(clip) -> None:
    """The per-head attention recorded for TransMM/rollout is what ``nn.MultiheadAttention``
    itself returns with ``need_weights`` (open_clip calls it without)."""
    x = images(2, 4)
    recorded = trace(clip, clip.check(x)).attentions
    blocks = clip.net.transformer.resblocks
    embedded = clip.pfvs(x, "ln_pre")["ln_pre"]  # the tokens entering the first block
    tokens = torch.cat([embedded.prefix, embedded.vectors], 1)
    assert len(recorded) == len(blocks) == 2
    for block, a in zip(blocks, recorded, strict=True):
        with torch.no_grad():
            t = block.ln_1(tokens)
            _, reference = block.attn(t, t, t, need_weights=True, average_attn_weights=False)
            tokens = block(tokens)
        torch.testing.assert_close(a, reference)
    maps = attributor("rollout", clip).attribute(x, 3)
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all()


def test_streamed_training_and_grounding(clip, tmp_path) -> None:
    x = images(8, 3)
    config = SAETraining(method="topk-sae", n_concepts=32, k=4, batch_size=8,
                         buffer_tokens=32, image_batch=2)
    trainer = SAETrainer(clip, TensorImages(x, "noise"), [LAYER], tmp_path, ["patch", "cls"],
                         config)
    bases = trainer.run(progress=False)
    # memory-bounded: 128 patch tokens went through a 32-token buffer, every one used once
    assert trainer.buffers[(LAYER, "patch")].data.shape == (32, 64)
    assert bases[f"{LAYER}-patch"].provenance["steps"] == 8 * 16 // 8
    assert bases[f"{LAYER}-cls"].provenance["steps"] == 1
    x = x[:4]
    for name, basis in bases.items():
        acts = latent_activations(clip, basis, x)
        positions = token_positions(basis, clip.pfvs(x[:1], LAYER)[LAYER])
        pairs = select_pairs(acts, positions, (acts > 0).any(1).sum(0).topk(2).indices, 1)
        assert len(pairs) >= 1 and bool(pairs.is_cls.all()) == (basis.tokens == "cls"), name
        for method in ("attnlrp", "integrated-gradients", "gradient"):
            maps = latent_ierfs(clip, basis, x, pairs, method)
            assert maps.shape == (len(pairs), 32, 32) and torch.isfinite(maps).all()
            assert maps.abs().sum((1, 2)).gt(0).all(), (name, method)
        scores = patch_scores(clip, basis, x, pairs, maps)
        curves = insertion_curves(clip, basis, x, pairs, scores, "zero", steps=4)
        assert torch.allclose(curves[:, -1], torch.ones(len(pairs)), atol=1e-3)
        assert torch.isfinite(auc(curves)).all()


def test_missing_open_clip_names_the_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "open_clip", None)  # import open_clip → ImportError
    with pytest.raises(IerfError, match=r"pip install -e '\.\[clip\]'"):
        load_model("openclip/ViT-L-14", weights=None)


def test_unknown_weights_tag(clip) -> None:
    with pytest.raises(IerfError, match="neither an open_clip tag"):
        load_model("openclip/ViT-B-32", weights="no-such-tag")


def test_local_methods_run_or_say_which_to_use(clip) -> None:
    """Ablation-CAM stands in for a block that open_clip calls with ``attn_mask`` (the
    library's ViT ablation layer took one argument: TypeError); a batch equals its images one
    at a time. Zennit's LRP cannot pass nn.MultiheadAttention: one line naming AttnLRP."""
    x = images(2, seed=5)
    cam = attributor("ablationcam", clip, batch_size=16)
    maps = cam.attribute(x, target=0)
    assert maps.shape == (2, 32, 32) and torch.isfinite(maps).all() and maps.abs().sum() > 0
    torch.testing.assert_close(cam.attribute(x[1:], target=0)[0], maps[1], rtol=1e-4, atol=1e-5)
    for method in ("lrp", "lrp-zplus"):
        with pytest.raises(IerfError, match="MultiheadAttention.*attnlrp"):
            attributor(method, clip).attribute(x, target=0)
