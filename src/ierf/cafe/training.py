"""Train SAEs on a model's tokens, per layer and token kind, streamed over an image set
(IERF Sec. V-A, Eqs. 8–9; Sec. V-C: one Matryoshka SAE per layer).

:class:`SAETrainer` runs each image batch through the model once, for every layer asked
for, and feeds each (layer, token kind)'s :class:`~ierf.cafe.streaming.TokenBuffer`; a full
buffer is shuffled and drained into that extractor's :mod:`~ierf.cafe.learners` learner:
Adam steps for any :class:`~ierf.concepts.extractors.SAEBase` of
:data:`ierf.concepts.fitting.METHODS` (``sae.loss``, then ``sae.constrain``; the decoder
bias starts at the mean of the first buffer), or mini-batch updates of
:class:`~ierf.concepts.extractors.minibatch_kmeans.MiniBatchSphericalKMeans`
(``minibatch-kmeans``: "any extractor allowed"; initialised by bisecting spherical k-means
on the first buffer, encoding ``"nearest"`` so that its latents have gradients).

Progress is checkpointed into ``OUT/checkpoint.safetensors`` (SAE weights, Adam moments,
buffered tokens, random state, position in the stream, settings), written atomically; a
run with the same settings resumes where the last one stopped, bit for bit, and one with
other settings is refused. At the end each SAE is saved as a
:class:`~ierf.concepts.basis.ConceptBasis` folder ``OUT/<layer>-<tokens>/`` and the
checkpoint is removed.

Data-parallel under ``torchrun`` (:mod:`ierf.dist`): rank ``r`` of ``R`` streams the image
batches ``r, r + R, r + 2R, …`` into its own buffers (drained with its own shuffling
generator, seeded ``seed + r``), and every Adam step uses the gradients averaged over the
ranks (:class:`~ierf.cafe.learners.SAELearner` ``average``), so the ranks stay in lockstep
with one SAE: ``R`` ranks with minibatch ``b`` take the steps of one process on the union of
their ``R`` minibatches of ``b`` tokens. Rank 0 alone writes checkpoints (with every rank's
buffers and generator) and the bases, and shows the progress bar.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from ierf.cafe.learners import KMeansLearner, Learner, SAELearner
from ierf.cafe.streaming import ImageStream, TokenBuffer
from ierf.concepts.basis import TOKEN_KINDS, ConceptBasis
from ierf.concepts.extractors import SAEBase, SparseAutoencoder, TopKSAE
from ierf.concepts.extractors.base import default_n_concepts
from ierf.concepts.extractors.minibatch_kmeans import MiniBatchSphericalKMeans
from ierf.concepts.extractors.sae import cpu_threads, step_threads
from ierf.concepts.fitting import METHODS
from ierf.dist import all_mean, barrier, distributed, gather_to_rank0, rank_world
from ierf.errors import IerfError, unknown_name
from ierf.io import atomic_path
from ierf.lock import WriterLock, rank0_lock
from ierf.models.fingerprint import weights_fingerprint
from ierf.models.model import Model
from ierf.models.pfv import PFVs
from ierf.store import ConfigMismatchError, as_stored, differences

SAE_METHODS = tuple(name for name, cls in METHODS.items() if issubclass(cls, SAEBase))
TRAIN_METHODS = (*SAE_METHODS, *(name for name, cls in METHODS.items()
                                 if issubclass(cls, MiniBatchSphericalKMeans)))
"""What :class:`SAETrainer` trains from the stream: the SAEs and mini-batch k-means."""
CHECKPOINT = "checkpoint.safetensors"


@dataclass(frozen=True)
class SAETraining:
    """What to train: the SAE (``method``, ``K``, ``k`` or ``l1_coeff``) and how.

    Parameters
    ----------
    method : one of :data:`TRAIN_METHODS` (default ``matryoshka-sae``, the paper's;
        ``minibatch-kmeans``: spherical k-means, one Lloyd-style update per minibatch).
    n_concepts : latents ``K`` (``None``: ``8 C``).
    k : active latents per token (TopK family).
    l1_coeff : λ of Eq. 9 (ReLU ``sae``).
    epochs : passes over the images (each one runs the model again).
    passes : Adam passes over each full buffer before it is refilled (reuses tokens: cheap
        extra steps on a small image set; 1 for a large one).
    batch_size : tokens per Adam step (per k-means update).
    buffer_tokens : capacity of each (layer, kind)'s buffer, in tokens.
    image_batch : images per forward pass.
    lr : Adam's learning rate.
    seed : seeds the SAEs' initial weights and the shuffling.
    """

    method: str = "matryoshka-sae"
    n_concepts: int | None = None
    k: int = 8
    l1_coeff: float = 1e-2
    epochs: int = 1
    passes: int = 1
    batch_size: int = 256
    buffer_tokens: int = 65536
    image_batch: int = 32
    lr: float = 1e-3
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in TRAIN_METHODS:
            raise unknown_name("training method", self.method, TRAIN_METHODS)
        for name in ("epochs", "passes", "batch_size", "buffer_tokens", "image_batch", "k"):
            if getattr(self, name) < 1:
                raise IerfError(f"{name} must be ≥ 1, got {getattr(self, name)}")
        if self.buffer_tokens < self.batch_size:
            raise IerfError(f"the buffer ({self.buffer_tokens} tokens) must hold at least one "
                            f"minibatch ({self.batch_size} tokens)")

    def build(self, n_features: int, device: torch.device | str = "cpu",
              data_parallel: bool = False) -> Learner:
        """A fresh learner (SAE and its optimiser, or k-means) for ``n_features``-channel
        tokens; ``data_parallel``: its steps average gradients over the ``torchrun`` ranks."""
        cls = METHODS[self.method]
        if issubclass(cls, MiniBatchSphericalKMeans):
            return KMeansLearner(cls(self.n_concepts, batch_size=self.batch_size,
                                     seed=self.seed, encoding="nearest"))
        opts = ({"k": self.k} if issubclass(cls, TopKSAE) else
                {"l1_coeff": self.l1_coeff} if issubclass(cls, SparseAutoencoder) else {})
        sae = cls(n_features, self.n_concepts, seed=self.seed, **opts).to(device)
        return SAELearner(sae, self.lr, all_mean if data_parallel else None)

    def n_latents(self, n_features: int) -> int:
        """``K`` for ``n_features``-channel tokens."""
        return default_n_concepts(n_features, self.n_concepts)


def tokens_of(pfvs: PFVs, kind: str) -> torch.Tensor:
    """``(B, T, C)`` tokens of ``kind`` (as :meth:`ConceptBasis.select`)."""
    if kind == "patch":
        return pfvs.vectors
    if kind == "cls":
        return pfvs.prefix[:, :1]
    return torch.cat([pfvs.prefix, pfvs.vectors], 1)


class SAETrainer:
    """SAEs for ``layers`` × ``tokens`` of ``model``, trained on ``images`` into ``out``.

    Everything that can be checked before the first forward pass is: layer names, CLS
    tokens, the token count (at least one minibatch of each kind per epoch), and settings
    against a checkpoint or finished SAEs in ``out``. ``shard``: ``(rank, ranks)`` of the
    data-parallel split (default: this process's ``torchrun`` rank; gradients are averaged
    only within a process group).
    """

    def __init__(self, model: Model, images: ImageStream, layers: Sequence[str],
                 out: str | Path, tokens: Sequence[str] = ("patch",),
                 config: SAETraining = SAETraining(), device: str | torch.device = "cpu",
                 shard: tuple[int, int] | None = None) -> None:
        self.model, self.images, self.out, self.config = model, images, Path(out), config
        self.rank, self.ranks = shard if shard is not None else rank_world()
        self.device = torch.device(device)
        self.layers, self.kinds = list(dict.fromkeys(layers)), list(dict.fromkeys(tokens))
        if not self.layers or not self.kinds:
            raise IerfError("give at least one layer and one token kind")
        for kind in self.kinds:
            if kind not in TOKEN_KINDS:
                raise unknown_name("token kind", kind, TOKEN_KINDS)
            if kind != "patch" and not model.num_prefix_tokens:
                raise IerfError(f"{model.name} has no CLS token: train on tokens='patch'")
        for layer in self.layers:
            model.module(layer)
        self.keys = [(layer, kind) for layer in self.layers for kind in self.kinds]
        self.n_batches = -(-len(images) // config.image_batch)
        if self.ranks > 1:
            if config.method not in SAE_METHODS:
                raise IerfError(f"{config.method} trains in one process: run it without "
                                "torchrun, or choose an SAE method")
            if len(images) % (self.ranks * config.image_batch):
                raise IerfError(f"{self.ranks} ranks need the same tokens each: give a number "
                                f"of images that is a multiple of {self.ranks} × image batch "
                                f"{config.image_batch}, not {len(images)}")
        self.settings = as_stored({
            "model": model.name, "fingerprint": weights_fingerprint(model.net),
            "images": images.describe(), "layers": self.layers, "tokens": self.kinds,
            "ranks": self.ranks, **asdict(config)})

    def name(self, layer: str, kind: str) -> str:
        """Folder (and checkpoint prefix) of one SAE: ``<layer>-<kind>``."""
        return f"{layer}-{kind}"

    # -- running ----------------------------------------------------------------------------

    def run(self, progress: bool = True, stop_after: int | None = None
            ) -> dict[str, ConceptBasis] | None:
        """Train (resuming from a checkpoint in ``out``) and save the bases.

        ``stop_after``: process at most this many image batches in this call, checkpoint and
        return ``None`` (call again to go on). Returns ``{"<layer>-<kind>": basis}`` when done.
        """
        # one trainer per output folder (lock file beside it), held by rank 0 for all ranks;
        # if another run holds it, every rank raises at once instead of waiting at a collective
        with rank0_lock(self.out) if distributed() else (
                WriterLock(self.out) if self.rank == 0 else contextlib.nullcontext()):
            return self._run(progress, stop_after)

    def _run(self, progress: bool, stop_after: int | None) -> dict[str, ConceptBasis] | None:
        finished = self._finished()
        if finished is not None:
            return finished
        self._setup()
        total = self.config.epochs * self.n_batches // self.ranks     # this rank's batches
        done_now = 0
        bar = tqdm(total=total, initial=self.position, desc="SAE training", unit="batch",
                   disable=not progress or self.rank != 0)
        try:
            while self.position < total:
                if stop_after is not None and done_now >= stop_after:
                    self._checkpoint()
                    return None
                self._step((self.position * self.ranks + self.rank) % self.n_batches)
                self.position += 1
                done_now += 1
                bar.update()
                bar.set_postfix({k: f"{v:.3g}" for k, v in self.losses.items()})
                if self.position % self.checkpoint_every == 0:
                    self._checkpoint()
        finally:
            bar.close()
        for key in self.keys:
            if self.buffers[key].size:
                self._train(key)
        return self._save()

    checkpoint_every: int = 20

    def _setup(self) -> None:
        """Probe one image, build learners and buffers, and load a checkpoint."""
        cfg = self.config
        if len(self.images) == 0:
            raise IerfError("the image set is empty")
        probe = self._tokens(self.images.load(0, 1))
        need = {key: max(cfg.batch_size, cfg.n_latents(t.shape[1]) if cfg.method not in
                         SAE_METHODS else 1) for key, t in probe.items()}
        short = [f"{self.name(*key)}: {len(self.images)} images × {len(t)} tokens < "
                 f"{need[key]}" for key, t in probe.items()
                 if len(self.images) * len(t) < need[key]]
        if short:
            raise IerfError(f"image set too small: {'; '.join(short)} tokens (one minibatch of "
                            f"{cfg.batch_size}; k-means also needs one token per cluster); "
                            "give more images or a smaller batch size / fewer concepts")
        if cfg.method not in SAE_METHODS and cfg.buffer_tokens < max(need.values()):
            raise IerfError(f"k-means starts from one buffer: --buffer {cfg.buffer_tokens} "
                            f"must hold at least {max(need.values())} tokens (one per cluster)")
        self.learners: dict[tuple[str, str], Learner] = {}
        self.buffers: dict[tuple[str, str], TokenBuffer] = {}
        for key, t in probe.items():
            self.learners[key] = cfg.build(t.shape[1], self.device,
                                           self.ranks > 1 and distributed())
            self.buffers[key] = TokenBuffer(cfg.buffer_tokens, t.shape[1], self.device)
        self.generator = torch.Generator().manual_seed(cfg.seed + self.rank)
        self.position = 0
        self.steps = {self.name(*k): 0 for k in self.keys}
        self.losses: dict[str, float] = {}
        self._load_checkpoint()

    @torch.no_grad()
    def _tokens(self, x: torch.Tensor) -> dict[tuple[str, str], torch.Tensor]:
        pfvs = self.model.pfvs(x.to(self.device), self.layers)
        return {(layer, kind): tokens_of(pfvs[layer], kind).flatten(0, 1)
                for layer, kind in self.keys}

    def _step(self, batch: int) -> None:
        start = batch * self.config.image_batch
        x = self.images.load(start, min(start + self.config.image_batch, len(self.images)))
        for key, tokens in self._tokens(x).items():
            buffer = self.buffers[key]
            buffer.add(tokens)
            while buffer.full:
                self._train(key)

    def _train(self, key: tuple[str, str]) -> None:
        """Drain ``key``'s buffer into its learner's steps (started on the first buffer)."""
        learner, buffer = self.learners[key], self.buffers[key]
        name = self.name(*key)
        if self.steps[name] == 0:
            learner.start(buffer.data[:buffer.size])
        total, count = 0.0, 0
        data = buffer.data
        k = default_n_concepts(data.shape[-1], learner.extractor.n_concepts)
        threads = step_threads(self.config.batch_size, data.shape[-1], k, data.device)
        with cpu_threads(threads):
            for batch in buffer.drain(self.config.batch_size, self.generator,
                                       self.config.passes):
                loss = learner.step(batch)
                self.steps[name] += 1
                total, count = total + loss * len(batch), count + len(batch)
        self.losses[name] = total / max(count, 1)

    # -- files ------------------------------------------------------------------------------

    def _save(self) -> dict[str, ConceptBasis]:
        """Every rank's bases (the same SAEs); rank 0 writes them and removes the
        checkpoint."""
        bases = {}
        for (layer, kind), learner in self.learners.items():
            name = self.name(layer, kind)
            basis = ConceptBasis.bind(learner.extractor, self.model, layer, tokens=kind,
                                      method=self.config.method, images=self.images.describe(),
                                      steps=self.steps[name], final_loss=self.losses.get(name),
                                      training=self.settings)
            if self.rank == 0:
                basis.save(self.out / name)
            bases[name] = basis
        if self.rank == 0:
            (self.out / CHECKPOINT).unlink(missing_ok=True)
        barrier()
        return bases

    def _finished(self) -> dict[str, ConceptBasis] | None:
        """The bases of a finished run with these settings; refuses other settings'."""
        if (self.out / CHECKPOINT).exists():
            return None
        folders = [self.out / self.name(*key) for key in self.keys]
        present = [f for f in folders if f.exists()]
        if not present:
            return None
        bases = {f.name: ConceptBasis.load(f) for f in present}
        for name, basis in bases.items():
            stored = basis.provenance.get("training", {})
            if changes := differences(stored, self.settings):
                raise ConfigMismatchError(f"{str(self.out / name)!r} holds an SAE trained with "
                                          f"other settings ({'; '.join(changes)}); choose "
                                          "another output folder or delete it")
        return bases if len(present) == len(folders) else None

    def _checkpoint(self) -> None:
        """Rank 0 writes the learners (the same on every rank) and every rank's buffers and
        shuffling generator (``rank<r>/…``)."""
        mine = {"rng": self.generator.get_state()}
        for key in self.keys:
            for k, v in self.buffers[key].state().items():
                mine[f"{self.name(*key)}/buffer/{k}"] = v.detach().cpu()
        per_rank = gather_to_rank0(mine)
        if per_rank is not None:
            tensors = {f"rank{r}/{k}": v for r, part in enumerate(per_rank)
                       for k, v in part.items()}
            for key, learner in self.learners.items():
                tensors.update({f"{self.name(*key)}/{k}": v for k, v in learner.state().items()})
            meta = {"settings": self.settings, "position": self.position, "steps": self.steps,
                    "losses": self.losses}
            tensors = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
            with atomic_path(self.out / CHECKPOINT) as tmp:
                save_file(tensors, tmp, metadata={"ierf": json.dumps(meta)})
        barrier()

    def _load_checkpoint(self) -> None:
        path = self.out / CHECKPOINT
        if not path.exists():
            return
        try:
            with safe_open(path, framework="pt", device=str(self.device)) as f:
                meta = json.loads(f.metadata()["ierf"])
                names = list(f.keys())
                tensors = {k: f.get_tensor(k) for k in names}
        except Exception as e:  # noqa: BLE001 - any damage means the same thing
            raise IerfError(f"{path} is not a readable SAE checkpoint ({e}); delete it to "
                            "start afresh") from None
        if changes := differences(meta["settings"], self.settings):
            raise ConfigMismatchError(f"{str(path)!r} holds a run with other settings "
                                      f"({'; '.join(changes)}); re-run with the same options "
                                      "to resume, or choose another output folder")
        rank = f"rank{self.rank}/"
        self.generator.set_state(tensors[f"{rank}rng"].cpu())
        self.position, self.steps, self.losses = meta["position"], meta["steps"], meta["losses"]
        for key, learner in self.learners.items():
            name = self.name(*key)
            mine = {k.removeprefix(f"{name}/"): v for k, v in tensors.items()
                    if k.startswith(f"{name}/")}
            if self.steps[name]:            # a learner that has not started has no state
                learner.load_state(mine)
            self.buffers[key].load_state({k: tensors[f"{rank}{name}/buffer/{k}"]
                                          for k in ("data", "overflow")})
