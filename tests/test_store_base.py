"""The resumable-store base (ierf.store) and the image-source grammar (ierf.data.sources)."""

from __future__ import annotations

import sqlite3

import pytest
import torch

import ierf
from ierf.atlas.sampling import atlas_samples
from ierf.data.sources import (
    BENCHMARK,
    FOLDER,
    PHOTOS,
    benchmark_label_maps,
    image_ids,
    load_images,
    parse_source,
)
from ierf.store import ConfigMismatchError, ResumableStore, differences, transaction


class Notes(ResumableStore):
    schema = "CREATE TABLE IF NOT EXISTS notes (text TEXT NOT NULL);"
    volatile = ("created",)
    derived = ("size",)
    holds = "notes of another run"
    hint = "use --overwrite"


def test_settings_are_fixed_at_creation_and_checked_on_reopen(tmp_path):
    path = tmp_path / "sub" / "notes.sqlite"
    with Notes(path, {"a": (1, 2), "created": "then"}) as s, transaction(s.con):
        s.con.execute("INSERT INTO notes VALUES ('kept')")
    with Notes(path, {"a": [1, 2], "created": "now"}) as s:  # tuples compare as stored
        assert s.settings == {"a": [1, 2], "created": "then"}
    with pytest.raises(ConfigMismatchError, match=r"holds notes of another run \(a: stored "
                       r"\[1, 2\], now 3; b: stored null, now 1\); use --overwrite"):
        Notes(path, {"a": 3, "b": 1})
    assert sqlite3.connect(path).execute("SELECT text FROM notes").fetchall() == [("kept",)]


def test_a_failed_transaction_is_rolled_back(tmp_path):
    with Notes(tmp_path / "n.sqlite", {}) as s:
        with pytest.raises(RuntimeError), transaction(s.con):
            s.con.execute("INSERT INTO notes VALUES ('lost')")
            raise RuntimeError
        assert s.con.execute("SELECT COUNT(*) FROM notes").fetchone()[0] == 0


def test_derived_settings_are_reported_only_alone():
    assert differences({"a": 1, "size": 2}, {"a": 2, "size": 3}, derived=("size",)) == \
        ["a: stored 1, now 2"]
    assert differences({"a": 1, "size": 2}, {"a": 1, "size": 3}, derived=("size",)) == \
        ["size: stored 2, now 3"]


def test_one_grammar_for_image_sources(tmp_path):
    assert parse_source("benchmark").resolved() == parse_source("benchmark:0:train")
    assert str(parse_source("benchmark:3:val")) == "benchmark:3:val"
    assert str(parse_source("synthetic", benchmark="synthetic").resolved(5, "test")) == \
        "benchmark:5:test"
    assert parse_source("photos").kind == PHOTOS and parse_source(tmp_path).kind == FOLDER
    assert str(parse_source(tmp_path)) == str(tmp_path.resolve())
    for bad in ("benchmark:1", "benchmark:x:train", "benchmark:1:nope"):
        with pytest.raises(ierf.IerfError, match="'benchmark:<seed>:<split>'"):
            parse_source(bad)
    assert image_ids(parse_source("photos"), 2) == ierf.data.images.BUNDLED_PHOTOS[:2]
    with pytest.raises(ierf.IerfError, match="none of these"):
        image_ids(parse_source(tmp_path / "nowhere"))


def test_benchmark_images_and_label_maps_are_the_scenes_of_the_stream(toy):
    from ierf.data.synthetic import make_scene, render_without

    source = parse_source("benchmark:4:test")
    assert source.kind == BENCHMARK
    scenes = [render_without(make_scene(i, 4, "test")) for i in range(3)]
    torch.testing.assert_close(load_images(source, ["0", "2"], toy),
                               torch.cat([toy.preprocess(scenes[i][0]) for i in (0, 2)]))
    maps = benchmark_label_maps(source, ["1"], "part")
    assert maps.dtype == torch.int64 and (maps[0].numpy() == scenes[1][1]["part"]).all()
    with pytest.raises(ierf.IerfError, match="synthetic benchmark only"):
        benchmark_label_maps(parse_source("photos"), ["cat"], "part")


class OtherNet:
    """An engine that explains with its own copy of the network (no forward pass to share)."""

    def __init__(self, model: ierf.Model) -> None:
        import copy

        self.name, self.inner = "srd", ierf.SRD(model)
        self.copy = ierf.SRD(copy.deepcopy(model))

    def relevance(self, x, target=None, layers=()):
        return self.copy.relevance(x, target, layers)

    def ierfs(self, x, targets, internal_batch_size=16):
        return self.inner.ierfs(x, targets, internal_batch_size)


def test_an_engine_without_a_shared_forward_gives_the_same_samples(toy):
    x = load_images(parse_source("benchmark:5:test"), ["0", "1", "2"], toy)
    args = (x, [0, 1, 2], ["layer2", "layer3"], 2, 0, 2, 16)
    shared = atlas_samples(toy, ierf.SRD(toy), *args)
    plain = atlas_samples(toy, OtherNet(toy), *args)
    for layer in shared:
        for key in shared[layer]:
            torch.testing.assert_close(shared[layer][key], plain[layer][key], rtol=0, atol=0)
