"""Stores that nothing corrupts silently: one writer, read-only opening, one-line storage
errors, NaN / Inf refused where they enter."""

from __future__ import annotations

import contextlib
import copy
import errno
import json
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from PIL import Image

import ierf
from ierf.atlas import build_atlas, open_atlas
from ierf.atlas.store import MANIFEST, ShardWriter, prepare_atlas
from ierf.atlas.verify import verify_atlas
from ierf.bench.store import ResultStore
from ierf.cli import main
from ierf.concepts import BisectingSphericalKMeans
from ierf.concepts.basis import CONFIG_FILE, TENSOR_FILE, ConceptBasis
from ierf.concepts.decompose import decompose
from ierf.concepts.fitting import fit_concepts
from ierf.errors import storage_error
from ierf.lock import StoreBusyError, WriterLock

LAYERS, C, H = ["a", "b"], 5, 4
IDS = [str(i) for i in range(4)]
META = {"model": "toy-resnet", "weights": "pretrained", "fingerprint": 1.5,
        "source": "benchmark:0:train", "layers": LAYERS, "grids": {k: [3, 3] for k in LAYERS},
        "channels": {k: C for k in LAYERS}, "samples_per_image": 1, "input_size": [3, 8, 8],
        "ierf_downsample": 2, "ierf_size": [H, H], "ierf_method": "srd", "seed": 0,
        "n_images": len(IDS), "created": "now"}
HOLD = ("import sys; from ierf.lock import WriterLock; WriterLock(sys.argv[1]).acquire(); "
        "print('held', flush=True); sys.stdin.read()")


def samples(images: list[int], seed: int = 0, per: int = 1) -> dict[str, dict[str, torch.Tensor]]:
    """``per`` made-up samples per image and layer."""
    gen = torch.Generator().manual_seed(seed)
    img = torch.tensor(images, dtype=torch.long).repeat_interleave(per)
    n = len(img)
    pos = torch.randint(0, 9, (n,), generator=gen)
    return {layer: {"pfv": torch.randn(n, C, generator=gen),
                    "ierf": torch.randn(n, H, H, generator=gen), "image": img.clone(),
                    "sample": torch.arange(per).repeat(len(images)), "position": pos.clone(),
                    "row": pos // 3, "col": pos % 3, "predicted": torch.zeros(n, dtype=torch.long),
                    "contribution": torch.rand(n, generator=gen)} for layer in LAYERS}


def small_atlas(path: Path) -> Path:
    """A finished model-free atlas of 4 images in 2 shards."""
    prepare_atlas(path, META, IDS)
    with ShardWriter(path) as w:
        w.write([0, 1], samples([0, 1]))
        w.write([2, 3], samples([2, 3], 1))
    return path


def one_line_error(capsys, argv: list[str]) -> str:
    """Run the CLI, expect exit 2 and exactly one line on stderr; return it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("ierf: error: ") and err.count("\n") == 1, err
    return err


@pytest.fixture
def holder(tmp_path):
    """Start another process holding the writer lock of a path; yields a starter."""
    procs = []

    def start(store: Path) -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, "-c", HOLD, str(store)], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "held"
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        proc.kill()
        proc.wait()


# -- one writer ---------------------------------------------------------------------------


def test_a_second_writer_is_refused_at_once_naming_pid_and_host(tmp_path, holder):
    results = tmp_path / "results.sqlite"
    proc = holder(results)
    start = time.monotonic()
    with pytest.raises(StoreBusyError, match=f"being written by PID {proc.pid} on host "
                       f"{socket.gethostname()}"):
        ResultStore(results, {"a": 1})  # two `bench` runs on one output
    assert time.monotonic() - start < 5
    proc.kill()  # a killed writer leaves no stale lock
    proc.wait()
    with ResultStore(results, {"a": 1}) as store, WriterLock(results):  # re-entrant
        assert store.count() == 0


def test_a_second_atlas_build_is_refused_before_touching_the_folder(toy, tmp_path, holder,
                                                                     capsys):
    out = tmp_path / "atlas"
    proc = holder(out / MANIFEST)
    err = one_line_error(capsys, ["atlas", "build", "--model", "toy-resnet", "--images",
                                  "benchmark", "--n", "2", "--layers", "layer3", "--out",
                                  str(out)])
    assert f"PID {proc.pid} on host {socket.gethostname()}" in err
    assert not (out / MANIFEST).exists()
    with pytest.raises(StoreBusyError):
        prepare_atlas(out, META, IDS)
    other = small_atlas(tmp_path / "other")
    holder(other / MANIFEST)
    with pytest.raises(StoreBusyError):  # nor does a repair run beside a build
        verify_atlas(other, repair=True)
    assert verify_atlas(other).ok  # reading needs no lock


PAUSED_BUILD = """
import sys, time, pathlib
import ierf
from ierf.atlas import build_atlas, store
out, go = sys.argv[1], pathlib.Path(sys.argv[2])
commit = store.ShardWriter._commit
def paused(self, name, *args):
    if name.endswith("000001.safetensors"):  # renamed into place, not yet committed
        print("paused", flush=True)
        while not go.exists():
            time.sleep(0.02)
    return commit(self, name, *args)
store.ShardWriter._commit = paused
build_atlas(ierf.load_model("toy-resnet"), "benchmark:5:test", ["layer3"], out, n=2,
            batch_size=1, progress=False)
print("done", flush=True)
"""


def test_a_writer_paused_between_rename_and_commit_loses_nothing(toy, tmp_path, capsys):
    out, go = tmp_path / "atlas", tmp_path / "go"
    first = subprocess.Popen([sys.executable, "-c", PAUSED_BUILD, str(out), str(go)],
                             stdout=subprocess.PIPE, text=True,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        assert first.stdout.readline().strip() == "paused"
        shard = out / "shard-000-000001.safetensors"
        assert shard.exists()  # the window where a second writer's cleanup used to delete it
        err = one_line_error(capsys, ["atlas", "build", "--model", "toy-resnet", "--images",
                                      "benchmark:5:test", "--n", "2", "--layers", "layer3",
                                      "--batch-size", "1", "--out", str(out)])
        assert f"PID {first.pid}" in err and shard.exists()
        go.touch()
        assert first.stdout.readline().strip() == "done"
    finally:
        first.kill()
        first.wait()
    atlas = open_atlas(out)
    assert atlas.done == 2 and atlas.count("layer3") == 2 and verify_atlas(out).ok


# -- read-only opening ---------------------------------------------------------------------


def test_readers_never_write_to_the_manifest(tmp_path, capsys):
    path = small_atlas(tmp_path / "atlas")
    con = sqlite3.connect(path / MANIFEST)
    con.execute("PRAGMA journal_mode=DELETE")  # as a copied or archived manifest may be
    con.close()
    before = (path / MANIFEST).read_bytes()
    atlas = open_atlas(path)
    atlas.pfvs("a"), atlas.records("b")
    assert verify_atlas(path).ok and main(["atlas", "info", str(path)]) == 0
    assert (path / MANIFEST).read_bytes() == before  # still DELETE mode, not one byte changed
    assert sorted(p.name for p in path.iterdir() if p.name.startswith(MANIFEST)) == [MANIFEST]


READ_ONLY_CHECK = """
import sys, pathlib
from ierf.atlas import open_atlas
from ierf.atlas.verify import verify_atlas
path = pathlib.Path(sys.argv[1])
try:
    (path / "probe").write_text("x")
    print("writable")
except OSError:
    atlas = open_atlas(path)
    print(len(atlas.pfvs("a")), len(atlas.ierfs("b")), verify_atlas(path).ok)
"""


def test_a_read_only_atlas_folder_opens_and_reads(tmp_path):
    path = small_atlas(tmp_path / "atlas")
    code = [sys.executable, "-c", READ_ONLY_CHECK, str(path)]
    if os.geteuid() != 0:
        for p in [*path.iterdir(), path]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            run = subprocess.run(code, capture_output=True, text=True, check=False)
        finally:
            for p in [path, *path.iterdir()]:
                p.chmod(0o755 if p.is_dir() else 0o644)
    else:  # root ignores modes: a read-only bind mount in a private mount namespace
        if shutil.which("unshare") is None or subprocess.run(
                ["unshare", "-m", "true"], capture_output=True, check=False).returncode:
            pytest.skip("running as root without mount namespaces: cannot make a read-only "
                        "folder")
        mount = f"mount --bind -o ro {path} {path} && exec \"$@\""
        run = subprocess.run(["unshare", "-m", "sh", "-c", mount, "sh", *code],
                             capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.split() == ["4", "4", "True"]


# -- one-line storage errors --------------------------------------------------------------


def test_a_damaged_manifest_is_one_line(tmp_path, capsys):
    (tmp_path / "atlas").mkdir()
    (tmp_path / "atlas" / MANIFEST).write_bytes(b"garbage" * 100)
    for action in ("info", "verify"):
        err = one_line_error(capsys, ["atlas", action, str(tmp_path / "atlas")])
        assert "manifest.sqlite' is not an SQLite database or is damaged" in err


def test_unwritable_outputs_fail_before_any_work(toy, tmp_path, capsys, monkeypatch):
    path = small_atlas(tmp_path / "atlas")
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    monkeypatch.setattr("ierf.concepts.fitting.fit_basis",
                        lambda *a, **k: pytest.fail("fitted before checking the output"))
    err = one_line_error(capsys, ["concepts", "fit", str(path), "--layer", "a", "-o",
                                  str(blocker / "sub" / "basis")])
    assert str(blocker / "sub") in err
    err = one_line_error(capsys, ["atlas", "build", "--model", "toy-resnet", "--images",
                                  "benchmark", "--n", "2", "--layers", "layer3", "--out",
                                  str(blocker / "atlas")])
    assert "a-file" in err
    if os.geteuid() != 0:  # a real permission error (root ignores modes)
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        err = one_line_error(capsys, ["concepts", "fit", str(path), "--layer", "a", "-o",
                                      str(locked / "basis")])
        assert "permission denied" in err


def test_a_full_disk_is_one_line_and_resumable(tmp_path, monkeypatch):
    path = tmp_path / "atlas"
    prepare_atlas(path, META, IDS)
    with ShardWriter(path) as w:
        w.write([0, 1], samples([0, 1]))
        pages = w._con.execute("PRAGMA page_count").fetchone()[0]
        w._con.execute(f"PRAGMA max_page_count = {pages}")  # SQLite's own "disk is full"
        with pytest.raises(ierf.IerfError, match="disk is full: free space, then re-run") as e:
            w.write([2, 3], samples([2, 3], 1, per=300))  # rows that need new pages
        assert "manifest.sqlite" in str(e.value) and "\n" not in str(e.value)
        assert not w._con.in_transaction
    assert prepare_atlas(path, META, IDS).done == 2  # the uncommitted shard is an orphan: redone
    if Path("/dev/full").exists():  # a shard written to a full disk (the kernel's ENOSPC)
        monkeypatch.setattr("ierf.atlas.store.atomic_path",
                            lambda _path: contextlib.nullcontext("/dev/full"))
        with ShardWriter(path) as w, pytest.raises(ierf.IerfError, match="shard-000-000001"
                                                   ".safetensors': the disk is full"):
            w.write([2, 3], samples([2, 3], 1))
        monkeypatch.undo()
    with ShardWriter(path) as w:
        w.write(w.pending(), samples([2, 3], 1))
    assert open_atlas(path).done == 4 and verify_atlas(path).ok


def test_os_errors_are_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    full = storage_error(OSError(errno.ENOSPC, "No space left on device", "/data/x.bin"))
    assert str(full) == "'/data/x.bin': the disk is full: free space, then re-run the same " \
                        "command to resume"

    def denied(*_a, **_k):
        raise PermissionError(errno.EACCES, "Permission denied", "/shared/atlas/manifest.sqlite")

    monkeypatch.setattr("ierf.atlas.store.open_atlas", denied)  # escapes the command unwrapped
    err = one_line_error(capsys, ["atlas", "info", str(tmp_path)])
    assert "'/shared/atlas/manifest.sqlite': permission denied" in err


def test_a_decompression_bomb_is_refused_with_its_limit(tmp_path, monkeypatch):
    big = tmp_path / "big.png"
    Image.new("1", (20000, 10000)).save(big)  # 200 megapixels in 24 kB
    with pytest.raises(ierf.IerfError, match="over the limit of .* pixels.*IERF_MAX_PIXELS"):
        ierf.load_image(big)
    Image.new("RGB", (40, 30)).save(tmp_path / "small.png")
    monkeypatch.setenv("IERF_MAX_PIXELS", "1000")
    with pytest.raises(ierf.IerfError, match="40×30 pixels, over the limit of 1,000"):
        ierf.load_image(tmp_path / "small.png")
    monkeypatch.setenv("IERF_MAX_PIXELS", "2000")
    assert ierf.load_image(tmp_path / "small.png").size == (40, 30)


def test_broken_concept_files_are_one_line(tmp_path, capsys):
    path = small_atlas(tmp_path / "atlas")
    X = torch.randn(40, C)
    basis = ConceptBasis(BisectingSphericalKMeans(3, n_init=1).fit(X), "toy-resnet", 1.5, "a")
    folder = basis.save(tmp_path / "basis")
    meta = json.loads((folder / CONFIG_FILE).read_text())
    cards = ["concepts", "cards", str(path), str(folder), "-o", str(tmp_path / "cards")]
    (folder / CONFIG_FILE).write_text("{not json")
    assert "not readable JSON" in one_line_error(capsys, cards)
    (folder / CONFIG_FILE).write_text(json.dumps({**meta, "config": {"bogus": 1}}))
    assert "invalid BisectingSphericalKMeans config" in one_line_error(capsys, cards)
    (folder / CONFIG_FILE).write_text(json.dumps({**meta, "version": 99}))
    assert "format version 99" in one_line_error(capsys, cards)
    # the older two-file extractor format: a tensor file from another save is refused
    basis.extractor.save(tmp_path / "km")
    BisectingSphericalKMeans(2, n_init=1).fit(X).save(tmp_path / "other")
    shutil.copy(tmp_path / "other.safetensors", tmp_path / "km.safetensors")
    with pytest.raises(ierf.IerfError, match="does not belong to km.json"):
        ierf.concepts.ConceptExtractor.load(tmp_path / "km")


# -- NaN / Inf refused where they enter ------------------------------------------------------


@pytest.mark.parametrize("method", ["kmeans", "dictionary", "topk-sae"])
def test_nan_pfvs_are_refused_by_every_fit(method):
    X = torch.randn(64, 8)
    X[3, 2] = float("nan")
    with pytest.raises(ierf.IerfError, match="1 NaN/Inf value"):
        fit_concepts(X, method, 4)


def test_nan_in_decompose_and_in_a_saved_basis_is_refused(tmp_path):
    X, V = torch.randn(10, 8), torch.randn(8, 4)
    with pytest.raises(ierf.IerfError, match="X \\(PFVs\\) holds 1 NaN"):
        decompose(torch.where(torch.arange(80).reshape(10, 8) == 5, float("inf"), X), V, 0.1)
    with pytest.raises(ierf.IerfError, match="dictionary V holds"):
        decompose(X, V.masked_fill(V > 1, float("nan")), 0.1)
    km = BisectingSphericalKMeans(3, n_init=1).fit(X)
    km.dictionary_ = km.dictionary_.masked_fill(km.dictionary_ > 0.5, float("nan"))
    folder = ConceptBasis(km, "toy-resnet", 1.5, "a").save(tmp_path / "nan")
    with pytest.raises(ierf.IerfError, match="tensors.safetensors.*NaN.*refit"):
        ConceptBasis.load(folder)
    assert (folder / TENSOR_FILE).exists()


def test_nan_weights_and_nan_samples_never_reach_an_atlas(toy, tmp_path):
    broken = copy.deepcopy(toy)
    with torch.no_grad():
        broken.net.layer2[0].conv1.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ierf.IerfError, match="'layer2.0.conv1.weight' holds 1 NaN"):
        build_atlas(broken, "benchmark", ["layer3"], tmp_path / "atlas", n=2, progress=False)
    assert not (tmp_path / "atlas").exists()
    path = tmp_path / "fake"
    prepare_atlas(path, META, IDS)
    bad = samples([0, 1])
    bad["b"]["pfv"][1, 0] = float("inf")
    with ShardWriter(path) as w, pytest.raises(ierf.IerfError, match="b/pfv samples of images "
                                               "\\[0, 1\\] holds 1 NaN/Inf"):
        w.write([0, 1], bad)
    assert not list(path.glob("*shard-*")) and open_atlas(path, partial=True).done == 0


def test_a_second_sae_trainer_on_one_folder_is_refused(tmp_path, holder, toy_vit):
    """CAFE's streaming SAE training holds the lock of its checkpoint folder too."""
    from ierf.cafe.streaming import TensorImages
    from ierf.cafe.training import CHECKPOINT, SAETrainer, SAETraining
    from ierf.data.synthetic import generate
    from ierf.lock import StoreBusyError

    proc = holder(tmp_path / "sae")
    images = TensorImages(toy_vit.normalize(generate(4, seed=1, split="train").images), "t4")
    config = SAETraining(n_concepts=8, k=2, batch_size=8, buffer_tokens=32, image_batch=4)
    trainer = SAETrainer(toy_vit, images, ["blocks.0"], tmp_path / "sae", ["cls"], config)
    with pytest.raises(StoreBusyError, match=f"PID {proc.pid}"):
        trainer.run(progress=False)
    assert not (tmp_path / "sae" / CHECKPOINT).exists()
