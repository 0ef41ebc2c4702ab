"""Damaged atlases: every corruption is refused by reads and reported by `ierf atlas verify`;
`--repair` and a plain re-run of the build give back the uninterrupted atlas."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

import ierf
import ierf.integrity
from ierf.atlas import build_atlas, open_atlas
from ierf.atlas.store import MANIFEST
from ierf.atlas.verify import verify_atlas
from ierf.cli import main
from ierf.integrity import CorruptFileError

LAYERS = ["layer2", "layer3"]
BUILD = {"samples_per_image": 2, "n": 5, "batch_size": 1, "seed": 3, "progress": False}


@pytest.fixture(scope="module")
def reference(toy, tmp_path_factory) -> ierf.atlas.Atlas:
    """The uninterrupted build: 5 images, one shard each."""
    return build_atlas(toy, "benchmark:5:test", LAYERS, tmp_path_factory.mktemp("ref"), **BUILD)


def rebuild(toy, path: Path) -> ierf.atlas.Atlas:
    return build_atlas(toy, "benchmark:5:test", LAYERS, path, **BUILD)


def copy(reference, tmp_path: Path) -> Path:
    out = tmp_path / "atlas"
    shutil.copytree(reference.path, out, ignore=shutil.ignore_patterns(".*.lock"))
    return out


def shards(path: Path) -> list[Path]:
    return sorted(path.glob("shard-*.safetensors"))


def read_everything(path: Path, partial: bool = False) -> None:
    atlas = open_atlas(path, partial=partial)
    for layer in atlas.layers:
        atlas.pfvs(layer), atlas.ierfs(layer), atlas.records(layer)


def assert_same(a, b) -> None:
    assert a.images == b.images and len(a) == len(b)
    for layer in LAYERS:
        ra, rb = a.records(layer), b.records(layer)
        for k in ra:
            torch.testing.assert_close(ra[k], rb[k], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.pfvs(layer), b.pfvs(layer), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(a.ierfs(layer), b.ierfs(layer), rtol=1e-5, atol=1e-6)


def sql(path: Path, statement: str, *args: object) -> list[tuple]:
    con = sqlite3.connect(path / MANIFEST)
    with con:
        rows = con.execute(statement, args).fetchall()
    con.close()
    return rows


def flip_byte(path: Path) -> None:
    file = shards(path)[1]
    blob = bytearray(file.read_bytes())
    blob[-7] ^= 0xFF  # a data byte: the file still parses
    file.write_bytes(bytes(blob))


def truncate(path: Path) -> None:
    file = shards(path)[2]
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def delete(path: Path) -> None:
    shards(path)[0].unlink()


def swap(path: Path) -> None:
    a, b = shards(path)[2], shards(path)[4]
    a.rename(path / "x")
    b.rename(a)
    (path / "x").rename(b)


def edit_sample_rows(path: Path) -> None:
    name = shards(path)[1].name
    (r0, i0, s0), (r1, i1, s1) = sql(path, "SELECT row, image, sample FROM samples WHERE "
                                     "shard = ? AND layer = 'layer3' ORDER BY row LIMIT 2", name)
    sql(path, "UPDATE samples SET row = ? WHERE layer = 'layer3' AND image = ? AND sample = ?",
        r1, i0, s0)
    sql(path, "UPDATE samples SET row = ? WHERE layer = 'layer3' AND image = ? AND sample = ?",
        r0, i1, s1)


def drop_shard_row(path: Path) -> None:
    sql(path, "DELETE FROM shards WHERE name = ?", shards(path)[2].name)


def unmark_image(path: Path) -> None:
    sql(path, "UPDATE images SET shard = NULL WHERE idx = (SELECT MIN(image) FROM samples "
        "WHERE shard = ?)", shards(path)[1].name)


def damage_legacy_header(path: Path) -> None:
    """A manifest without hashes (an older ierf) and a shard whose header is garbage."""
    file = shards(path)[0]
    sql(path, "UPDATE shards SET bytes = NULL, sha256 = NULL")
    file.write_bytes(b"\xff" * 16 + file.read_bytes()[16:])


CORRUPTIONS: dict[str, Callable[[Path], None]] = {
    "flipped data byte": flip_byte, "truncated shard": truncate, "deleted shard": delete,
    "swapped shard files": swap, "edited samples rows": edit_sample_rows,
    "deleted shards row": drop_shard_row, "image unmarked": unmark_image,
    "unreadable header, no hashes": damage_legacy_header,
}


@pytest.mark.parametrize("damage", CORRUPTIONS.values(), ids=CORRUPTIONS.keys())
def test_corruption_is_refused_reported_and_repaired(toy, reference, tmp_path, capsys, damage):
    path = copy(reference, tmp_path)
    damage(path)
    with pytest.raises(ierf.IerfError) as refused:     # reads refuse, in one line
        read_everything(path)
    assert "\n" not in str(refused.value) and ("verify" in str(refused.value)
                                               or "incomplete" in str(refused.value))
    if damage is drop_shard_row:  # a re-run before the repair deletes no referenced file
        kept = set(path.glob("shard-*"))
        with pytest.raises(ierf.IerfError, match="verify"):
            read_everything(rebuild(toy, path).path)
        assert set(path.glob("shard-*")) == kept
    assert main(["atlas", "verify", str(path)]) == 1
    out = capsys.readouterr().out
    assert "problem(s)" in out and "0 problem(s)" not in out and "--repair" in out
    assert main(["atlas", "verify", str(path), "--repair"]) == 0
    assert "image(s) marked not done" in capsys.readouterr().out
    read_everything(path, partial=True)  # what is left reads back
    assert verify_atlas(path).ok


def test_repair_then_a_plain_rerun_gives_the_uninterrupted_atlas(toy, reference, tmp_path):
    path = copy(reference, tmp_path)
    for damage in (flip_byte, edit_sample_rows, drop_shard_row):  # shards 1 and 2
        damage(path)
    report = verify_atlas(path, repair=True)
    assert report.dropped == [p.name for p in shards(reference.path)[1:3]]
    assert report.redo == 2 and open_atlas(path, partial=True).done == 3
    assert_same(rebuild(toy, path), reference)  # rebuilds exactly those two images
    assert verify_atlas(path).ok


def test_unreferenced_files_are_reported_and_removed(reference, tmp_path):
    path = copy(reference, tmp_path)
    (path / "shard-000-000009.safetensors").write_bytes(b"orphan")
    (path / ".shard-000-000010.safetensors.abc.safetensors").write_bytes(b"half")
    read_everything(path)  # readers never see them
    report = verify_atlas(path)
    assert len(report.problems) == 2 and all("not referenced" in p for p in report.problems)
    repaired = verify_atlas(path, repair=True)
    assert repaired.redo == 0 and len(repaired.removed) == 2
    assert verify_atlas(path).ok and len(shards(path)) == 5


def test_each_shard_is_hashed_once_per_process(reference, tmp_path, monkeypatch):
    path = copy(reference, tmp_path)
    calls = []
    real = ierf.integrity.sha256_file
    monkeypatch.setattr(ierf.integrity, "sha256_file", lambda p: calls.append(p) or real(p))
    read_everything(path)
    read_everything(path)  # a second Atlas, same process: no more hashing
    assert len(calls) == len(shards(path))
    flip_byte(path)  # rewritten: the file's mtime changed, so it is hashed again
    with pytest.raises(CorruptFileError, match="altered"):
        read_everything(path)


def test_info_reports_missing_and_truncated_shards(reference, tmp_path, capsys):
    path = copy(reference, tmp_path)
    truncate(path)
    delete(path)
    assert main(["atlas", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "DAMAGED: 2 shard file(s) missing or truncated" in out and "--repair" in out


def test_a_manifest_from_before_hashes_reads_and_gets_them(toy, reference, tmp_path):
    path = copy(reference, tmp_path)
    sql(path, "ALTER TABLE shards DROP COLUMN sha256")
    sql(path, "ALTER TABLE shards DROP COLUMN bytes")
    read_everything(path)
    assert verify_atlas(path).ok
    rebuild(toy, path)  # resuming adds the columns (nothing left to do)
    assert {c for _, c, *_ in sql(path, "PRAGMA table_info(shards)")} >= {"sha256", "bytes"}
