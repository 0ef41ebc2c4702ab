"""The atlas store (shards + SQLite manifest) and relevance-weighted sampling, without a model."""

from __future__ import annotations

import sqlite3

import numpy as np
import pytest
import torch
from scipy import stats

import ierf
from ierf.atlas.sampling import area_downsample, image_seed, sample_positions
from ierf.atlas.store import MANIFEST, ShardWriter, open_atlas, prepare_atlas
from ierf.atlas.verify import verify_atlas

LAYERS = ["a", "b"]
C, H = 5, 4


def meta(**changes) -> dict:
    m = {"model": "toy-resnet", "weights": "pretrained", "fingerprint": 1.5,
         "source": "benchmark:0:train",
         "layers": LAYERS, "grids": {k: [3, 3] for k in LAYERS}, "channels": {k: C for k in LAYERS},
         "samples_per_image": 2, "input_size": [3, 8, 8], "ierf_downsample": 2,
         "ierf_size": [H, H], "ierf_method": "srd", "seed": 0, "n_images": 6,
         "created": "now"}
    return {**m, **changes}


IDS = [str(i) for i in range(6)]


def fake_samples(images: list[int], gen: torch.Generator) -> dict[str, dict[str, torch.Tensor]]:
    """Random samples of ``images``: image i has i % 3 samples (0, 1 or 2) per layer."""
    out = {}
    for layer in LAYERS:
        img = torch.tensor([i for i in images for _ in range(i % 3)], dtype=torch.long)
        smp = torch.tensor([s for i in images for s in range(i % 3)], dtype=torch.long)
        n = len(img)
        pos = torch.randint(0, 9, (n,), generator=gen)
        out[layer] = {"pfv": torch.randn(n, C, generator=gen),
                      "ierf": torch.randn(n, H, H, generator=gen), "image": img, "sample": smp,
                      "position": pos, "row": pos // 3, "col": pos % 3,
                      "predicted": torch.randint(0, 8, (n,), generator=gen),
                      "contribution": torch.rand(n, generator=gen)}
    return out


def concat(parts: list[dict[str, dict[str, torch.Tensor]]], layer: str) -> dict[str, torch.Tensor]:
    """Samples of ``layer`` from several batches, sorted by (image, sample) independently."""
    d = {k: torch.cat([p[layer][k] for p in parts]) for k in parts[0][layer]}
    key = d["image"] * 100 + d["sample"]
    order = torch.argsort(key)
    return {k: v[order] for k, v in d.items()}


def test_shards_of_two_ranks_read_back_merged_in_image_order(tmp_path):
    gen = torch.Generator().manual_seed(0)
    assert prepare_atlas(tmp_path, meta(), IDS).done == 0
    batches = {0: [[0, 2], [4]], 1: [[1, 3], [5]]}
    written = []
    with ShardWriter(tmp_path, rank=1) as w1, ShardWriter(tmp_path, rank=0) as w0:
        assert w0.pending() == list(range(6))
        for r0, r1 in zip(batches[0], batches[1]):  # interleaved commits of the two ranks
            written += [fake_samples(r1, gen), fake_samples(r0, gen)]
            w1.write(r1, written[-2])
            w0.write(r0, written[-1])
        assert w0.pending() == [] and w1.pending() == []
    atlas = open_atlas(tmp_path)
    assert atlas.images == IDS and atlas.layers == LAYERS
    assert len(atlas) == 2 * sum(i % 3 for i in range(6))
    for layer in LAYERS:
        want = concat(written, layer)
        records = atlas.records(layer)
        for k in records:
            torch.testing.assert_close(records[k], want[k], rtol=0, atol=0)
        torch.testing.assert_close(atlas.pfvs(layer), want["pfv"], rtol=0, atol=0)
        torch.testing.assert_close(atlas.ierfs(layer), want["ierf"], rtol=0, atol=0)
        assert atlas.count(layer) == len(want["image"])
    names = sorted(p.name for p in tmp_path.glob("shard-*"))
    assert names == ["shard-000-000000.safetensors", "shard-000-000001.safetensors",
                     "shard-001-000000.safetensors", "shard-001-000001.safetensors"]


def test_a_crash_between_shard_rename_and_manifest_commit_leaves_no_visible_shard(
        tmp_path, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    prepare_atlas(tmp_path, meta(), IDS)
    with ShardWriter(tmp_path) as w:
        w.write([0, 1], fake_samples([0, 1], gen))

        def crash(*_args, **_kwargs):
            raise KeyboardInterrupt("killed between rename and commit")

        monkeypatch.setattr(ShardWriter, "_commit", crash)
        with pytest.raises(KeyboardInterrupt):
            w.write([2, 3], fake_samples([2, 3], gen))
    orphan = tmp_path / "shard-000-000001.safetensors"
    assert orphan.exists()  # renamed into place, but never committed
    (tmp_path / ".shard-000-000002.safetensors.tmp.safetensors").write_bytes(b"half")
    partial = open_atlas(tmp_path, partial=True)
    assert partial.done == 2 and partial.records("a")["image"].tolist() == [1]
    with pytest.raises(ierf.IerfError, match="incomplete .2 of 6.*re-run"):
        open_atlas(tmp_path)
    monkeypatch.undo()
    assert prepare_atlas(tmp_path, meta(created="later"), IDS).done == 2  # the resume step
    assert not orphan.exists() and not list(tmp_path.glob(".shard-*"))
    with ShardWriter(tmp_path) as w:
        assert w.pending() == [2, 3, 4, 5]
        w.write([2, 3, 4, 5], fake_samples([2, 3, 4, 5], gen))
    atlas = open_atlas(tmp_path)
    assert atlas.records("b")["image"].tolist() == [1, 2, 2, 4, 5, 5]
    assert atlas.records("b")["sample"].tolist() == [0, 0, 1, 0, 0, 1]
    assert atlas.meta["created"] == "now"  # the first run's meta is kept


def test_manifest_is_in_wal_mode_and_indexes_every_sample_once(tmp_path):
    gen = torch.Generator().manual_seed(2)
    prepare_atlas(tmp_path, meta(), IDS)
    with ShardWriter(tmp_path) as w:
        w.write(list(range(6)), fake_samples(list(range(6)), gen))
        with pytest.raises(ierf.IerfError, match="already holds.*verify"):  # no duplicates
            w.write([1], fake_samples([1], gen))
    con = sqlite3.connect(tmp_path / MANIFEST)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    rows = con.execute("SELECT layer, image, sample FROM samples").fetchall()
    assert len(rows) == len(set(rows)) == 2 * 6
    assert con.execute("SELECT COUNT(*) FROM shards").fetchone()[0] == 1  # rolled back


def test_a_different_build_in_the_same_folder_is_refused_unless_overwritten(tmp_path):
    prepare_atlas(tmp_path, meta(), IDS)
    for change, key in (({"layers": ["a"]}, "layers"), ({"samples_per_image": 1}, "samples"),
                        ({"model": "toy-vgg"}, "model")):
        with pytest.raises(ierf.IerfError, match=f"{key}.*--out.*--overwrite"):
            prepare_atlas(tmp_path, meta(**change), IDS)
    changed = prepare_atlas(tmp_path, meta(), IDS[:5] + ["x"])  # another image set resumes
    assert (changed.new, changed.gone, changed.total) == (1, 0, 6)
    assert prepare_atlas(tmp_path, meta(model="toy-vgg"), IDS, overwrite=True).done == 0
    assert open_atlas(tmp_path, partial=True).meta["model"] == "toy-vgg"


def test_images_leaving_and_rejoining_the_set_keep_their_samples(tmp_path):
    gen = torch.Generator().manual_seed(5)
    prepare_atlas(tmp_path, meta(), IDS)
    with ShardWriter(tmp_path) as w:
        w.write([0, 1, 2], fake_samples([0, 1, 2], gen))
        w.skip({3: "cannot identify image file"})
    written = fake_samples([0, 1, 2], torch.Generator().manual_seed(5))
    # image "0" gone, "2" changed, "x" new; "3" (skipped, unchanged) stays skipped
    changes = prepare_atlas(tmp_path, meta(), ["1", "2", "3", "x"], ["", "edited", "", ""])
    assert (changes.total, changes.done, changes.new, changes.changed, changes.gone) == \
        (4, 2, 1, 1, 1)
    with ShardWriter(tmp_path) as w:
        assert w.ids(w.pending()) == ["2", "x"]
    partial = open_atlas(tmp_path, partial=True)
    assert partial.images == ["1", "2", "x"] and partial.skipped == {"3": "cannot identify image file"}
    assert partial.done == 1  # "1"; the samples of "0" and of the old "2" are no longer read
    image = written["a"]["image"]
    torch.testing.assert_close(partial.pfvs("a"), written["a"]["pfv"][image == 1], rtol=0, atol=0)
    assert partial.records("b")["image"].tolist() == [0] and verify_atlas(tmp_path).ok
    back = prepare_atlas(tmp_path, meta(), IDS[:3])  # the first run's images, unchanged
    assert (back.done, back.restored, back.gone) == (3, 2, 0)
    atlas = open_atlas(tmp_path)
    for layer in LAYERS:
        torch.testing.assert_close(atlas.pfvs(layer), written[layer]["pfv"], rtol=0, atol=0)
        assert torch.equal(atlas.records(layer)["image"], written[layer]["image"])


def test_a_manifest_from_before_changing_image_sets_reads_and_resumes(tmp_path):
    gen = torch.Generator().manual_seed(6)
    prepare_atlas(tmp_path, meta(), IDS)
    with ShardWriter(tmp_path) as w:
        w.write([0, 1, 2, 3, 4, 5], written := fake_samples(list(range(6)), gen))
    con = sqlite3.connect(tmp_path / MANIFEST)
    for column in ("pos", "sha256", "skipped"):
        con.execute(f"ALTER TABLE images DROP COLUMN {column}")
    con.commit()
    con.close()
    old = open_atlas(tmp_path)
    assert old.images == IDS and old.skipped == {} and verify_atlas(tmp_path).ok
    torch.testing.assert_close(old.pfvs("a"), written["a"]["pfv"], rtol=0, atol=0)
    assert prepare_atlas(tmp_path, meta(), IDS).done == 6  # columns added, rows kept
    assert open_atlas(tmp_path).images == IDS


def test_missing_and_foreign_folders_say_how_to_build(tmp_path):
    with pytest.raises(ierf.IerfError, match="no atlas.*ierf atlas build"):
        open_atlas(tmp_path / "nothing")
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(ierf.IerfError, match="non-empty folder"):
        prepare_atlas(tmp_path, meta(), IDS)
    with pytest.raises(ierf.IerfError, match="is a file"):
        prepare_atlas(tmp_path / "notes.txt", meta(), IDS)


def test_sampling_frequencies_follow_the_positive_contributions():
    gen = torch.Generator().manual_seed(3)
    contribution = torch.randn(1, 12, generator=gen)
    contribution[0, :3] = torch.tensor([-1.0, 0.0, -0.5])
    draws = 12000
    pos, counts = sample_positions(contribution.expand(draws, -1), 1,
                                   [image_seed(7, str(i), "layer") for i in range(draws)])
    assert counts.eq(1).all()
    observed = torch.bincount(pos[:, 0], minlength=12).numpy()
    p = contribution[0].clamp_min(0).double().numpy()
    assert observed[p == 0].sum() == 0  # non-positive contributions are never drawn
    expected = p[p > 0] / p.sum() * draws
    _, pvalue = stats.chisquare(observed[p > 0], expected)
    assert pvalue > 1e-3
    # and not uniform over the positive positions
    assert stats.chisquare(observed[p > 0])[1] < 1e-6


def test_sampling_without_replacement_edge_cases_and_determinism():
    contribution = torch.tensor([[0.5, 0.0, 2.0, 1.0, 0.1],    # 4 positive
                                 [-1.0, 0.3, 0.0, -2.0, 0.0],  # 1 positive
                                 [-1.0, 0.0, 0.0, -2.0, 0.0]])  # none
    seeds = [image_seed(0, str(i), "x") for i in range(3)]
    pos, counts = sample_positions(contribution, 3, seeds)
    assert counts.tolist() == [3, 1, 0]
    assert len(set(pos[0].tolist())) == 3 and 1 not in pos[0].tolist()
    assert pos[1].tolist() == [1, -1, -1] and pos[2].tolist() == [-1, -1, -1]
    again, _ = sample_positions(contribution, 3, seeds)
    assert torch.equal(pos, again)
    alone, _ = sample_positions(contribution[:1] * 3.0, 3, seeds[:1])  # batch and scale free
    assert torch.equal(alone[0], pos[0])
    other = torch.stack([sample_positions(contribution[:1], 3, [image_seed(s, "0", "x")])[0][0]
                         for s in range(1, 20)])
    assert (other != pos[0]).any()
    assert image_seed(0, "0", "x") != image_seed(0, "0", "y") != image_seed(0, "1", "y")
    with pytest.raises(ierf.IerfError, match="≥ 1"):
        sample_positions(contribution, 0, seeds)


def test_area_downsample_is_block_mean_and_keeps_the_total_up_to_the_factor():
    maps = torch.randn(2, 3, 8, 12)
    down = area_downsample(maps, 4)
    blocks = maps.numpy().reshape(2, 3, 2, 4, 3, 4).mean((3, 5))
    np.testing.assert_allclose(down.numpy(), blocks, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(down.sum((-2, -1)) * 16, maps.sum((-2, -1)))
    assert area_downsample(maps, 1) is maps
    with pytest.raises(ierf.IerfError, match="divide"):
        area_downsample(maps, 5)
