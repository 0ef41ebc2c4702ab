"""Long atlas builds: resumes over a changed image set, unreadable images skipped and recorded."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from PIL import Image

import ierf
from ierf.atlas import build_atlas, open_atlas
from ierf.atlas.store import MANIFEST
from ierf.atlas.verify import verify_atlas
from ierf.cli import main
from ierf.data.synthetic import generate

LAYERS = ["layer3"]
OPTIONS = {"samples_per_image": 2, "batch_size": 2, "ierf_downsample": 4, "progress": False}


def save_png(image: torch.Tensor, path) -> None:
    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)).save(path)


@pytest.fixture
def folder(tmp_path):
    """Six benchmark scenes as PNGs im0…im5, and three more scenes to swap in."""
    folder = tmp_path / "images"
    folder.mkdir()
    scenes = generate(9, 3, "val").images
    for i in range(6):
        save_png(scenes[i], folder / f"im{i}.png")
    return folder, scenes[6:]


def contents(atlas) -> dict:
    out = {"images": list(atlas.images)}
    for layer in atlas.layers:
        out[layer] = {**atlas.records(layer), "pfv": atlas.pfvs(layer), "ierf": atlas.ierfs(layer)}
    return out


def assert_same(a: dict, b: dict) -> None:
    assert a["images"] == b["images"]
    for layer in LAYERS:
        assert a[layer].keys() == b[layer].keys()
        for k, v in a[layer].items():
            if v.is_floating_point():  # float32 sums in another batch composition
                torch.testing.assert_close(v, b[layer][k], rtol=1e-4, atol=1e-5)
            else:
                assert torch.equal(v, b[layer][k]), (layer, k)


def shard_count(path) -> int:
    con = sqlite3.connect(path / MANIFEST)
    try:
        return con.execute("SELECT COUNT(*) FROM shards").fetchone()[0]
    finally:
        con.close()


def test_a_changed_image_set_resumes_to_the_fresh_build_of_the_new_set(toy, folder, tmp_path,
                                                                        capsys):
    folder, spare = folder
    out = tmp_path / "atlas"
    first = contents(build_atlas(toy, folder, LAYERS, out, **OPTIONS))
    shards = shard_count(out)
    (folder / "im1.png").unlink()               # gone
    save_png(spare[0], folder / "im3.png")      # changed content, same name
    save_png(spare[1], folder / "im9.png")      # new
    resumed = build_atlas(toy, folder, LAYERS, out, **{**OPTIONS, "progress": True})
    assert "resuming: 4 of 6 images already done; image set changed: 1 new, 1 changed " \
           "(rebuilt), 1 gone (no longer read)" in capsys.readouterr().err
    fresh = build_atlas(toy, folder, LAYERS, tmp_path / "fresh", **OPTIONS)
    assert resumed.images == ["im0.png", "im2.png", "im3.png", "im4.png", "im5.png", "im9.png"]
    assert_same(contents(resumed), contents(fresh))
    assert shard_count(out) == shards + 1  # im3 and im9 only: one batch of 2
    assert verify_atlas(out).ok
    # the first run's images, unchanged, are kept as they were
    kept = [first["images"].index(i) for i in ("im0.png", "im2.png")]
    for layer in LAYERS:
        mine = torch.isin(first[layer]["image"], torch.tensor(kept))
        again = torch.isin(resumed.records(layer)["image"], torch.tensor([0, 1]))
        torch.testing.assert_close(resumed.pfvs(layer)[again], first[layer]["pfv"][mine],
                                   rtol=0, atol=0)
    # the old image set back: the retired samples of im1 and im3 are read again, nothing built
    (folder / "im9.png").unlink()
    for i in (1, 3):
        save_png(generate(9, 3, "val").images[i], folder / f"im{i}.png")
    back = build_atlas(toy, folder, LAYERS, out, **{**OPTIONS, "progress": True})
    assert "resuming: 6 of 6 images already done; image set changed: 2 back in the set " \
           "(kept), 1 gone (no longer read)" in capsys.readouterr().err
    assert shard_count(out) == shards + 1
    assert_same(contents(back), first)


def test_other_settings_are_refused_saying_what_differs(toy, folder, tmp_path):
    folder, _ = folder
    out = tmp_path / "atlas"
    build_atlas(toy, folder, ["layer3"], out, n=2, **OPTIONS)
    for change, said in (({"seed": 1}, "seed: stored 0, now 1"),
                         ({"layers": ["layer2"]}, r'layers: stored \["layer3"\], now \["layer2"\]')):
        options = {"layers": ["layer3"], **OPTIONS, **change}
        with pytest.raises(ierf.IerfError, match=said + ".*--overwrite.*image set alone"):
            build_atlas(toy, folder, out=out, n=2, **options)
    other = load_random_toy()
    with pytest.raises(ierf.IerfError, match="fingerprint: stored"):
        build_atlas(other, folder, ["layer3"], out, n=2, **OPTIONS)


def load_random_toy() -> ierf.Model:
    from ierf.atlas.store import load_atlas_model

    return load_atlas_model("toy-resnet", "random:1")


def test_unreadable_images_are_skipped_recorded_and_retried_only_once_changed(
        toy, folder, tmp_path, capsys):
    folder, spare = folder
    (folder / "bad.png").write_bytes(b"not an image at all")
    (folder / "cut.png").write_bytes((folder / "im0.png").read_bytes()[:60])  # truncated
    out = tmp_path / "atlas"
    args = ["atlas", "build", "--model", "toy-resnet", "--images", str(folder), "--layers",
            "layer3", "--batch-size", "3", "--out", str(out)]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "skipped bad.png: cannot identify image file" in captured.err
    assert "atlas toy-resnet" in captured.err and "8/8" in captured.err  # the progress bar
    assert "6 of 6 done" in captured.out and "skipped 2 unreadable image(s)" in captured.out
    atlas = open_atlas(out)
    assert sorted(atlas.skipped) == ["bad.png", "cut.png"] and "bad.png" not in atlas.images
    assert "cannot identify image file" in atlas.skipped["bad.png"]
    assert verify_atlas(out).ok
    fresh = build_atlas(toy, folder, ["layer3"], tmp_path / "fresh", batch_size=8, progress=False)
    assert fresh.images == atlas.images
    torch.testing.assert_close(fresh.pfvs("layer3"), atlas.pfvs("layer3"), rtol=1e-4, atol=1e-5)
    shards = shard_count(out)
    assert main(args) == 0  # unchanged: not retried
    assert shard_count(out) == shards and "8 of 8 images already done" in capsys.readouterr().err
    assert main(["atlas", "info", str(out)]) == 0
    assert "bad.png: cannot identify image file" in capsys.readouterr().out
    save_png(spare[0], folder / "bad.png")  # repaired: built by the next run
    assert main(args) == 0
    assert "1 changed (rebuilt)" in capsys.readouterr().err
    atlas = open_atlas(out)
    assert list(atlas.skipped) == ["cut.png"] and atlas.images[0] == "bad.png"
    assert shard_count(out) == shards + 1 and verify_atlas(out).ok
