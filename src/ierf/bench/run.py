"""Run attribution methods over a benchmark dataset and score every map (Sec. IV-B).

The metrics normalise each map by its largest absolute value themselves (Quantus' default,
the paper's setting, App. VII-G). Per-image scores go to a :class:`~ierf.bench.store.ResultStore` one (model, method, batch)
at a time, so a run can be interrupted and resumed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ierf.bench.data import BenchData
from ierf.bench.store import ResultStore
from ierf.errors import IerfError
from ierf.local.base import Attributor
from ierf.local.registry import attributor
from ierf.metrics.base import Explain, Metric
from ierf.models.model import Model


@dataclass(frozen=True)
class Job:
    """One row of a table on one model: ``method`` built with ``options``, shown as ``label``."""

    model: str
    method: str
    label: str = ""
    options: tuple[tuple[str, object], ...] = ()

    @property
    def row(self) -> str:
        return self.label or self.method


@dataclass
class Outcome:
    """Per-image scores per (model, row) and metric, and the jobs a model cannot run."""

    scores: dict[tuple[str, str], dict[str, np.ndarray]] = field(default_factory=dict)
    unavailable: dict[tuple[str, str], str] = field(default_factory=dict)


def explainer(method: Attributor) -> Explain:
    """``explain(net, x, y)`` for metrics that re-run the method on the same network
    (stability); a different network (randomisation) is refused rather than ignored."""
    def explain(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if net is not method.model.net:
            raise IerfError("the benchmark runner re-runs a method on its own model only; "
                            "call the randomisation metric with an explain(net, x, y) that "
                            "builds the attributor on `net`")
        return method.attribute(x, y)
    return explain


def load_datasets(jobs: Sequence[Job], load: Callable[[str], Model],
                  data: Callable[[Model], BenchData], device: str | torch.device = "cpu"
                  ) -> dict[str, tuple[Model, BenchData]]:
    """Each job's model (on ``device``) with its benchmark dataset, by model name."""
    out = {}
    for name in dict.fromkeys(j.model for j in jobs):
        model = load(name)
        model.net.to(device)
        out[name] = (model, data(model))
    return out


def run(jobs: Sequence[Job], metrics: dict[str, Metric],
        models: dict[str, tuple[Model, BenchData]], store: ResultStore, batch_size: int,
        seed: int = 0, device: str | torch.device = "cpu", progress: bool = True) -> Outcome:
    """Score every job on every batch, skipping batches already in ``store``.

    Parameters
    ----------
    jobs : the (model, method) pairs to run.
    metrics : metric instances by column name.
    models : model and dataset by model name (:func:`load_datasets`).
    store : where per-image scores are kept (and found when resuming).
    batch_size : images per batch (one stored unit).
    seed : seeds each batch's randomness, so resumed and uninterrupted runs agree.
    """
    outcome = Outcome()
    batches = {name: len(range(0, len(d), batch_size)) for name, (_, d) in models.items()}
    bar = tqdm(total=sum(batches[j.model] for j in jobs), desc="benchmark", unit="batch",
               disable=not progress)
    for job in jobs:
        model, dataset = models[job.model]
        todo = [b for b in range(batches[job.model]) if b not in store.done(job.model, job.row)]
        bar.update(batches[job.model] - len(todo))
        if todo:
            reason = _run_job(job, model, dataset, metrics, store, todo, batch_size, seed,
                              device, bar)
            if reason is not None:
                outcome.unavailable[(job.model, job.row)] = reason
                bar.write(f"{job.row} on {job.model}: not available ({reason})")
                continue
        outcome.scores[(job.model, job.row)] = {
            name: np.asarray(store.scores(job.model, job.row, name)) for name in metrics}
    bar.close()
    return outcome


def _run_job(job: Job, model: Model, dataset: BenchData, metrics: dict[str, Metric],
             store: ResultStore, todo: list[int], batch_size: int, seed: int,
             device: str | torch.device, bar: tqdm) -> str | None:
    """Score ``todo`` batches of one job; returns why the method cannot run, or ``None``."""
    try:
        method = attributor(job.method, model, **dict(job.options))
    except IerfError as e:
        return str(e)
    with method:
        explain = explainer(method)
        for b in todo:
            batch = dataset.batch(b * batch_size, (b + 1) * batch_size).to(device)
            _seed(seed, b)
            try:
                a = method.attribute(batch.x, batch.y)
            except IerfError as e:
                return str(e)
            scores = {}
            for name, metric in metrics.items():
                s = metric(model, batch.x, batch.y, a, mask=batch.mask, explain=explain)
                scores[name] = [float(v) for v in s.detach().cpu()]
            store.add(job.model, job.row, b, scores)
            bar.set_postfix_str(f"{job.model} · {job.row}", refresh=False)
            bar.update(1)
    return None


def _seed(seed: int, batch: int) -> None:
    """Seed torch (all devices) and numpy for one batch (SmoothGrad's noise, say)."""
    s = (seed * 1_000_003 + batch) % 2**31
    torch.manual_seed(s)
    np.random.seed(s)


def mean_se(values: np.ndarray) -> tuple[float, float, int]:
    """Mean, standard error (sample std / √n) and n of the finite values."""
    v = values[np.isfinite(values)]
    if len(v) == 0:
        return math.nan, math.nan, 0
    se = float(v.std(ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan
    return float(v.mean()), se, len(v)
