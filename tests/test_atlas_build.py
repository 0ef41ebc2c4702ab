"""Building PFV–iERF atlases on the toy models: contents, resume after SIGKILL, torchrun."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import ierf
from ierf.atlas import build_atlas, open_atlas
from ierf.atlas.sampling import atlas_samples
from ierf.atlas.store import MANIFEST, load_atlas_model
from ierf.cli import main
from ierf.data.synthetic import generate
from ierf.models.hooks import forward_hooks

N = 16
LAYERS = ["layer1", "layer2", "layer3"]


@pytest.fixture(scope="module")
def atlas(toy, tmp_path_factory):
    out = tmp_path_factory.mktemp("atlas")
    return build_atlas(toy, "benchmark:5:test", LAYERS, out, samples_per_image=2, n=N,
                       batch_size=6, ierf_downsample=2, seed=11, progress=False)


def benchmark_inputs(model: ierf.Model, n: int, seed: int, split: str) -> torch.Tensor:
    batch = generate(n, seed, split)
    return model.normalize(batch.images)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ierf.cli", *args], capture_output=True, text=True,
                          env=quiet_env(), timeout=300, check=False)


def quiet_env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def assert_same_atlas(a, b, exact_maps: bool = False) -> None:
    assert a.images == b.images and a.layers == b.layers and len(a) == len(b)
    tol = {"rtol": 0, "atol": 0} if exact_maps else {"rtol": 1e-4, "atol": 1e-5}
    for layer in a.layers:
        ra, rb = a.records(layer), b.records(layer)
        for k in ra:
            if k == "contribution":
                torch.testing.assert_close(ra[k], rb[k], **tol)
            else:
                assert torch.equal(ra[k], rb[k]), (layer, k)
        torch.testing.assert_close(a.pfvs(layer), b.pfvs(layer), **tol)
        torch.testing.assert_close(a.ierfs(layer), b.ierfs(layer), **tol)


def assert_no_orphans(path) -> None:
    con = sqlite3.connect(path / MANIFEST)
    committed = {n for (n,) in con.execute("SELECT name FROM shards")}
    assert {p.name for p in path.glob("*shard-*")} == committed
    rows = con.execute("SELECT layer, image, sample FROM samples").fetchall()
    assert len(rows) == len(set(rows))


def test_stored_samples_are_the_models_pfvs_and_their_srd_ierfs(toy, atlas):
    x = benchmark_inputs(toy, N, 5, "test")
    torch.testing.assert_close(atlas.load_images(torch.arange(N)), x)
    with torch.no_grad():
        predicted = toy(x).argmax(1)
    srd = ierf.SRD(toy)
    assert atlas.meta["ierf_size"] == [32, 32] and atlas.meta["grids"]["layer3"] == [8, 8]
    for layer in LAYERS:
        r = atlas.records(layer)
        grid_w = atlas.meta["grids"][layer][1]
        assert torch.equal(r["position"], r["row"] * grid_w + r["col"])
        assert torch.equal(r["predicted"], predicted[r["image"]])
        # up to 2 distinct samples per image, in (image, sample) order
        key = r["image"] * 2 + r["sample"]
        assert torch.equal(key, torch.sort(key).values) and len(key.unique()) == len(key)
        assert (r["contribution"] > 0).all()
        pfvs = toy.pfvs(x, layer)[layer].vectors
        torch.testing.assert_close(atlas.pfvs(layer), pfvs[r["image"], r["position"]])
        relevance = srd.relevance(x, predicted, layers=[layer])[layer].flatten(1)
        torch.testing.assert_close(r["contribution"], relevance[r["image"], r["position"]])
        ierfs = atlas.ierfs(layer)
        for j in range(0, len(r["image"]), 5):  # one sample at a time, image alone
            b, p = int(r["image"][j]), int(r["position"][j])
            full = srd.ierfs(x[b:b + 1], [ierf.PFVTarget(layer, p)])[0, 0].numpy()
            pooled = full.reshape(32, 2, 32, 2).mean((1, 3))  # area pooling, independently
            np.testing.assert_allclose(ierfs[j].numpy(), pooled, rtol=1e-4, atol=1e-6)


def test_vit_positions_index_the_patch_grid_without_the_cls_token(tmp_path):
    vit = ierf.load_model("toy-vit")
    a = build_atlas(vit, "benchmark:5:test", ["blocks.1"], tmp_path, samples_per_image=2, n=4,
                    progress=False)
    x = benchmark_inputs(vit, 4, 5, "test")
    r = a.records("blocks.1")
    assert len(r["image"]) == 8 and a.meta["grids"]["blocks.1"] == [8, 8]
    assert a.meta["ierf_method"] == "attnlrp"
    tokens = vit.pfvs(x, "blocks.1")["blocks.1"].vectors  # (B, 64, C), CLS apart
    torch.testing.assert_close(a.pfvs("blocks.1"), tokens[r["image"], r["position"]])
    # a ViT atlas takes its relevance and iERFs from AttnLRP (paper Sec. III-D)
    lrp = ierf.attributor("attnlrp", vit)
    want = lrp.ierfs(x, [ierf.PFVTarget("blocks.1", r["position"][r["sample"] == j])
                         for j in (0, 1)])  # (2, B, H, W)
    torch.testing.assert_close(a.ierfs("blocks.1"), want[r["sample"], r["image"]],
                               rtol=1e-4, atol=1e-6)
    token_relevance = lrp.relevance(x, r["predicted"].reshape(4, 2)[:, 0],
                                    ["blocks.1"])["blocks.1"][:, 1:].sum(-1)  # (B, 64)
    torch.testing.assert_close(a.records("blocks.1")["contribution"],
                               token_relevance[r["image"], r["position"]], rtol=1e-4, atol=1e-6)


class SeparatePasses:
    """The engine without ``forward_pass``: relevance, then a forward pass per layer's iERFs."""

    def __init__(self, engine) -> None:
        self.name, self._engine = engine.name, engine

    def relevance(self, x, target=None, layers=()):
        return self._engine.relevance(x, target, layers)

    def ierfs(self, x, targets, internal_batch_size=16):
        return self._engine.ierfs(x, targets, internal_batch_size)


@pytest.mark.parametrize("name, method, layers", [("toy-resnet", "srd", LAYERS),
                                                  ("toy-vit", "attnlrp", ["blocks.0", "blocks.2"])])
def test_a_batch_costs_one_forward_pass_and_gives_the_separate_passes_samples(
        toy, name, method, layers):
    model = toy if name == "toy-resnet" else ierf.load_model(name)
    engine = ierf.attributor(method, model)
    x = benchmark_inputs(model, 3, 5, "test")
    args = (x, [0, 1, 2], layers, 2, 0, 2, 3)
    for warm in (engine, SeparatePasses(engine)):  # SRD's image-independent bias passes, cached
        atlas_samples(model, warm, *args)
    passes = []
    with forward_hooks([(model.module(layers[0]), lambda *_: passes.append(1))]):
        shared = atlas_samples(model, engine, *args)
        assert len(passes) == 1
        separate = atlas_samples(model, SeparatePasses(engine), *args)
        assert len(passes) == 1 + 1 + len(layers)
    for layer in layers:
        assert shared[layer].keys() == separate[layer].keys()
        for key, value in shared[layer].items():  # the same ops: the same numbers
            torch.testing.assert_close(value, separate[layer][key], rtol=0, atol=0)


def test_the_srd_pass_explains_any_class_as_relevance_does(toy):
    x = benchmark_inputs(toy, 2, 6, "test")
    srd = ierf.SRD(toy)
    run = srd.forward_pass(x, ["layer2"])
    for target in (3, None):
        want = srd.relevance(x, target, layers=["layer2"])
        got = run.relevance(target)
        assert got.keys() == want.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=0, atol=0)
    with pytest.raises(ierf.IerfError, match="not 'layer1'.*forward_pass"):
        run.ierfs([ierf.PFVTarget("layer1", 0)])


def test_relevance_weighted_samples_sit_on_the_class_determining_parts(atlas):
    """Ground truth: the sampled layer1 cells cover the key parts several times more than cells
    drawn uniformly (Sec. III-D: relevance-weighted sampling avoids the background). In
    expectation over 48 images: 0.68 vs 0.08 at layer1, 0.28 vs 0.08 at layer2."""
    parts = generate(N, 5, "test").parts_mask.float()
    grid = atlas.meta["grids"]["layer1"]
    cells = F.adaptive_avg_pool2d(parts[:, None], grid)[:, 0].flatten(1)  # part share per cell
    r = atlas.records("layer1")
    assert cells[r["image"], r["position"]].mean() > 3 * cells.mean()


def test_sampling_does_not_depend_on_batch_size(toy, atlas, tmp_path):
    other = build_atlas(toy, "benchmark:5:test", LAYERS, tmp_path, samples_per_image=2, n=N,
                        batch_size=16, ierf_downsample=2, seed=11, progress=False)
    assert_same_atlas(other, atlas)
    reseeded = build_atlas(toy, "benchmark:5:test", ["layer3"], tmp_path / "s", n=N,
                           samples_per_image=2, batch_size=16, seed=12, progress=False)
    assert not torch.equal(reseeded.records("layer3")["position"],
                           atlas.records("layer3")["position"])


def test_folder_images_and_model_reload(toy, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    images = generate(3, 9, "val").images
    for i, img in enumerate(images):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(
            folder / f"im{i}.png")
    a = build_atlas(toy, folder, ["layer3"], tmp_path / "atlas", progress=False)
    assert a.images == ["im0.png", "im1.png", "im2.png"] and a.meta["source"] == str(folder)
    want = torch.cat([toy.preprocess(ierf.load_image(folder / f"im{i}.png")) for i in (2, 0)])
    torch.testing.assert_close(a.load_images([2, 0]), want)
    reloaded = a.model()
    torch.testing.assert_close(reloaded(want), toy(want))
    r1, r2 = load_atlas_model("toy-resnet", "random:3"), load_atlas_model("toy-resnet", "random:3")
    assert all(torch.equal(p, q) for p, q in zip(r1.net.parameters(), r2.net.parameters()))
    assert not torch.equal(next(r1.net.parameters()), next(toy.net.parameters()))
    seeded = build_atlas(r1, folder, ["layer3"], tmp_path / "r", weights="random:3", progress=False)
    assert all(torch.equal(p, q) for p, q in zip(seeded.model().net.parameters(),
                                                  r1.net.parameters()))
    mislabelled = build_atlas(r1, folder, ["layer3"], tmp_path / "m", progress=False)
    with pytest.raises(ierf.IerfError, match="fingerprint differs"):
        mislabelled.model()


def test_bad_input_errors(toy, atlas, tmp_path):
    with pytest.raises(ierf.IerfError, match="unknown layer 'layer9'.*Valid layers: .*layer3"):
        build_atlas(toy, "benchmark", ["layer9"], tmp_path / "a", n=4)
    with pytest.raises(ierf.IerfError, match="come after 'layer3'"):
        build_atlas(toy, "benchmark", ["avgpool"], tmp_path / "a", n=4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ierf.IerfError, match="no image files"):
        build_atlas(toy, tmp_path / "empty", ["layer3"], tmp_path / "a")
    with pytest.raises(ierf.IerfError, match="--n"):
        build_atlas(toy, "benchmark", ["layer3"], tmp_path / "a")
    with pytest.raises(ierf.IerfError, match="samples_per_image.*there.*--out.*--overwrite"):
        build_atlas(toy, "benchmark:5:test", LAYERS, atlas.path, samples_per_image=1, n=N,
                    ierf_downsample=2, seed=11, progress=False)


def test_cli_build_killed_mid_run_resumes_to_the_uninterrupted_atlas(toy, tmp_path, capsys):
    args = ["atlas", "build", "--model", "toy-resnet", "--images", "benchmark:2:val", "--n", "32",
            "--layers", "layer2,layer3", "--samples-per-image", "3", "--batch-size", "1",
            "--ierf-downsample", "4", "--out", str(tmp_path / "killed")]
    proc = subprocess.Popen([sys.executable, "-m", "ierf.cli", *args], env=quiet_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    manifest, shards, deadline = tmp_path / "killed" / MANIFEST, 0, time.time() + 120
    while shards < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.005)
        if manifest.exists():
            try:
                con = sqlite3.connect(manifest)
                shards = con.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
                con.close()
            except sqlite3.OperationalError:  # tables not created yet
                pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert shards >= 1
    partial = open_atlas(tmp_path / "killed", partial=True)
    assert 0 < partial.done < 32  # killed in the middle of the build
    done = cli(*args)
    assert done.returncode == 0, done.stderr
    assert "32 of 32 done" in done.stdout
    resumed = open_atlas(tmp_path / "killed")
    assert_no_orphans(resumed.path)
    reference = build_atlas(toy, "benchmark:2:val", ["layer2", "layer3"], tmp_path / "ref",
                            samples_per_image=3, n=32, batch_size=8, ierf_downsample=4,
                            progress=False)
    assert_same_atlas(resumed, reference)
    assert main(["atlas", "info", str(partial.path)]) == 0
    out = capsys.readouterr().out
    assert f"layer3: {reference.count('layer3')} samples" in out and "32 of 32 done" in out


def test_torchrun_two_gloo_ranks_build_the_same_atlas_as_one_process(toy, tmp_path):
    args = ["atlas", "build", "--model", "toy-resnet", "--images", "benchmark:4:test",
            "--num-images", "10",
            "--layers", "layer2,layer3", "--samples-per-image", "2", "--batch-size", "2",
            "--out", str(tmp_path / "ranks")]
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc-per-node", "2", "-m", "ierf.cli", *args], capture_output=True,
                         text=True, env=quiet_env(), timeout=300, check=False)
    assert run.returncode == 0, run.stderr[-3000:]
    two = open_atlas(tmp_path / "ranks")
    assert {p.name[:9] for p in two.path.glob("shard-*")} == {"shard-000", "shard-001"}
    assert_no_orphans(two.path)
    one = build_atlas(toy, "benchmark:4:test", ["layer2", "layer3"], tmp_path / "one",
                      samples_per_image=2, n=10, progress=False)
    assert_same_atlas(two, one)


@pytest.mark.slow
def test_efficientnet_lite0_atlas_of_the_bundled_photos(lite0, tmp_path):
    from ierf.data.images import BUNDLED_PHOTOS

    a = build_atlas(lite0, "photos", ["blocks.2", "blocks.4"], tmp_path, samples_per_image=2,
                    batch_size=5, ierf_downsample=4, progress=False)
    assert a.images == BUNDLED_PHOTOS and a.meta["ierf_size"] == [56, 56]
    x = a.load_images(torch.arange(len(BUNDLED_PHOTOS)))
    with torch.no_grad():
        predicted = lite0(x).argmax(1)
    for layer in a.layers:
        r = a.records(layer)
        assert torch.equal(r["predicted"], predicted[r["image"]])
        pfvs = lite0.pfvs(x, layer)[layer].vectors
        torch.testing.assert_close(a.pfvs(layer), pfvs[r["image"], r["position"]])
