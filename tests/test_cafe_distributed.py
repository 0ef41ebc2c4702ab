"""Data-parallel SAE training under ``torchrun`` (IERF Sec. V-C): two gloo ranks, each on its
own share of the images, take the Adam steps of one process on the union of their minibatches;
rank 0 checkpoints every rank's buffers, and a stopped run resumes under torchrun too."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from ierf.cafe.learners import SAELearner
from ierf.cafe.streaming import TensorImages
from ierf.cafe.training import CHECKPOINT, SAETrainer, SAETraining
from ierf.cli.cafe import image_stream
from ierf.concepts.basis import ConceptBasis
from ierf.errors import IerfError
from ierf.lock import WriterLock

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny steps: see conftest.py

SETTINGS = {"n_concepts": 16, "k": 2, "batch_size": 16, "buffer_tokens": 64, "image_batch": 2}
RANKS = 2
IMAGES = ("benchmark:1:train", 8)    # 2 image batches of 2 per rank: 4 × 64 tokens each

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    from ierf.cafe.training import CHECKPOINT, SAETrainer, SAETraining
    from ierf.cli.cafe import image_stream
    from ierf.concepts.basis import ConceptBasis
    from ierf.models import load_model

    out, settings = sys.argv[1], eval(sys.argv[2])
    model = load_model("toy-vit")
    images = image_stream("{source}", {n}, model, "train")

    def trainer():
        t = SAETrainer(model, images, ["blocks.0"], out, ["patch"], SAETraining(**settings))
        t.checkpoint_every = 1
        return t

    assert trainer().run(progress=False, stop_after=1) is None      # stopped: checkpointed
    assert (trainer().out / CHECKPOINT).is_file()
    bases = trainer().run(progress=False)                           # resumed under torchrun
    mine = bases["blocks.0-patch"].extractor.state_dict()
    saved = ConceptBasis.load(f"{{out}}/blocks.0-patch").extractor.state_dict()
    assert all(torch.equal(mine[k], saved[k]) for k in mine), "ranks hold different SAEs"
""")


def torchrun(script: str, out: os.PathLike, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           "--nproc-per-node", str(RANKS), script, str(out), repr(SETTINGS)],
                          capture_output=True, text=True, env=env, timeout=timeout, check=False)


def test_two_torchrun_ranks_take_the_steps_of_one_process_on_their_union(
        toy_vit, tmp_path, monkeypatch) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(source=IMAGES[0], n=IMAGES[1]))
    run = torchrun(str(script), tmp_path / "ddp", timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert not (tmp_path / "ddp" / CHECKPOINT).exists()
    ddp = ConceptBasis.load(tmp_path / "ddp" / "blocks.0-patch")

    # each rank's token stream, recorded alone (no process group: no averaging)
    starts, batches = [], []
    monkeypatch.setattr(SAELearner, "start", lambda self, t: starts.append(t.clone()))
    monkeypatch.setattr(SAELearner, "step",
                        lambda self, b: batches.append(b.clone()) or 0.0)
    images = image_stream(*IMAGES, toy_vit, "train")
    per_rank = []
    for rank in range(RANKS):
        starts.clear(), batches.clear()
        SAETrainer(toy_vit, images, ["blocks.0"], tmp_path / f"alone{rank}", ["patch"],
                   SAETraining(**SETTINGS), shard=(rank, RANKS)).run(progress=False)
        per_rank.append((torch.cat(starts), list(batches)))
    monkeypatch.undo()
    (start0, steps0), (start1, steps1) = per_rank
    assert len(steps0) == len(steps1) == 8 * 64 // RANKS // 16
    assert not torch.equal(steps0[0], steps1[0])                 # disjoint shares of images

    # the 1-process reference: one SAE, Adam steps on the ranks' minibatches side by side
    one = SAETraining(**SETTINGS).build(start0.shape[1])
    one.start(torch.cat([start0, start1]))
    for b0, b1 in zip(steps0, steps1, strict=True):
        one.step(torch.cat([b0, b1]))
    # Tolerance: the ranks' (g₀ + g₁)/2 and autograd's sum over 2b tokens round differently
    # (a few float32 ulps of the gradient); Adam's step lr·m̂/(√v̂ + ε) is scale-free, so that
    # moves a weight by ~lr·ulps per step, far below the ulp of the O(1) weights themselves.
    # A wrong step (no averaging, another minibatch, a missed constrain) moves weights by up
    # to lr = 1e-3: allow 1 % of that, ~170 ulps of 1.
    a, b = ddp.extractor.state_dict(), one.extractor.state_dict()
    assert set(a) == set(b)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-2 * SAETraining().lr, msg=k)
    assert ddp.provenance["training"]["ranks"] == RANKS
    alone = SAETraining(**SETTINGS).build(start0.shape[1])    # rank 0 without averaging
    alone.start(start0)
    for b0 in steps0:
        alone.step(b0)
    c = alone.extractor.state_dict()
    assert max((c[k] - a[k]).abs().max().item() for k in a) > 10 * 1e-2 * SAETraining().lr


def test_uneven_shares_and_kmeans_are_refused(toy_vit) -> None:
    x = TensorImages(torch.zeros(6, 3, 32, 32), "z6")
    with pytest.raises(IerfError, match="multiple of 2 × image batch 2, not 6"):
        SAETrainer(toy_vit, x, ["blocks.0"], "unused", ["patch"], SAETraining(**SETTINGS),
                   shard=(0, 2))
    with pytest.raises(IerfError, match="minibatch-kmeans trains in one process"):
        SAETrainer(toy_vit, x, ["blocks.0"], "unused", ["patch"],
                   SAETraining(method="minibatch-kmeans"), shard=(1, 2))


def test_every_rank_stops_when_another_run_holds_the_folder(tmp_path) -> None:
    """Rank 0 cannot take the writer lock: rank 1 must raise the same error itself. It used
    to wait for rank 0 at the first collective — torchrun's agent then killed it silently
    once rank 0 had died; a launcher that does not (srun, mpirun) would leave it hanging."""
    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(source=IMAGES[0], n=IMAGES[1]))
    with WriterLock(tmp_path / "busy"):                     # another writer: this process
        run = torchrun(str(script), tmp_path / "busy", timeout=150)
    assert run.returncode != 0
    said = run.stdout + run.stderr
    assert said.count(f"PID {os.getpid()}") >= RANKS, said[-3000:]   # both ranks name the holder
