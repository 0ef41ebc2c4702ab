"""Concept deletion on ``fact-toy`` (FaCT Sec. 6, Fig. 7; App. F): the tail replays the
network exactly, importances are what they claim, deleting everything leaves no logit, the
exact contributions beat a random order, and the bench writes its table and figure."""

from __future__ import annotations

import pytest
import torch

import ierf
from ierf.cli import main
from ierf.data.synthetic import generate
from ierf.errors import IerfError
from ierf.fact import (
    BcosConv2d,
    BottleneckTail,
    always_on,
    as_fact,
    concept_contributions,
    concept_deletion,
    concept_importances,
)


@pytest.fixture(scope="module")
def fact_toy() -> ierf.Model:
    return ierf.load_model("fact-toy")


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    b = generate(32, seed=77, split="test")
    return b.images, b.labels


@pytest.fixture(scope="module")
def deletion(fact_toy, batch):
    """Every method, 16 curve steps."""
    x, labels = batch
    return concept_deletion(fact_toy, x, labels, steps=16, ig_steps=4, seed=0)


@pytest.fixture(scope="module")
def fine(fact_toy, batch):
    """Two methods, every number of deleted concepts, a few images."""
    x, labels = batch
    return concept_deletion(fact_toy, x[:6], labels[:6], ["contribution", "activation"])


def test_tail_replays_the_network_after_the_bottleneck(fact_toy, batch, monkeypatch) -> None:
    x, _ = batch
    net = as_fact(fact_toy)
    tail = BottleneckTail(net, x[:8], "layer2", batch_size=3)  # chunked reference pass
    with torch.no_grad():
        logits = fact_toy(x[:8])
    names = {id(m): n for n, m in net.backbone.named_modules()}
    ran = []
    forward = BcosConv2d.forward

    def counted(self, h):
        ran.append(names[id(self)])
        return forward(self, h)

    monkeypatch.setattr(BcosConv2d, "forward", counted)
    rows = torch.tensor([5, 0, 0, 7])
    with torch.no_grad():
        out = tail(tail.codes[rows], rows)
    assert torch.allclose(tail.logits, logits, atol=1e-5)
    assert torch.allclose(out, logits[rows], atol=1e-5)
    # only the convs after the bottleneck compute; the earlier ones are replayed
    assert sorted(ran) == ["fc", "layer3.0.conv1", "layer3.0.conv2", "layer3.0.downsample.0"]
    assert not any("forward" in vars(m) or "encode" in vars(m) for m in net.modules())


def test_importances_are_what_they_claim(fact_toy, batch) -> None:
    x, _ = batch
    x = x[:8]
    imp = concept_importances(fact_toy, x, ig_steps=4)
    with torch.no_grad():
        logits = fact_toy(x)
    pred = logits.argmax(1)
    top1 = logits.gather(1, pred[:, None])[:, 0]
    exact = concept_contributions(fact_toy, x, classes=pred)
    assert torch.allclose(imp["contribution"], exact.contributions[:, 0], rtol=1e-4, atol=1e-5)
    assert torch.allclose(imp["activation"], exact.activations)
    # B-cos (B = 2) after the bottleneck is positively homogeneous of degree 1, so the
    # ordinary gradient × activation also sums to the logit (Euler) but splits it differently
    # from Eq. 9, and IG from the zero baseline equals it (the gradient is constant on the ray)
    scale = top1.abs().amax()
    assert torch.allclose(imp["grad-x-act"].sum(1), top1, atol=1e-4 * scale)
    assert (imp["grad-x-act"] - imp["contribution"]).abs().amax() > 1e-2 * scale
    assert torch.allclose(imp["integrated-gradients"], imp["grad-x-act"], atol=1e-4 * scale)
    other = concept_importances(fact_toy, x, ["random"], seed=1)["random"]
    assert not torch.equal(other, imp["random"])


def test_deleting_every_concept_leaves_no_logit(fact_toy, batch, deletion, fine) -> None:
    x, labels = batch
    with torch.no_grad():
        logits = fact_toy(x)
    top1 = logits.max(1).values
    assert deletion.counts[0] == 0 and deletion.counts[-1] == 128 and len(deletion.counts) == 17
    assert deletion.logits.shape == (5, 17, len(x))
    assert torch.allclose(deletion.logits[:, 0], top1.expand(5, -1), atol=1e-5)
    assert (deletion.logits[:, -1] == 0).all()  # bias-free: no concept, no logit
    assert (deletion.predictions[:, -1] == -1).all()  # a tie is no decision, not class 0
    assert (deletion.accuracy_curves()[:, -1] == 0).all()
    acc = (logits.argmax(1) == labels).double().mean()
    assert torch.allclose(deletion.accuracy_curves()[:, 0], acc.expand(5))
    # deleting inactive concepts changes nothing: once the activation order has deleted every
    # active concept of an image, its logit is exactly zero, and not one step before
    assert fine.counts.tolist() == list(range(129))
    n_active = (fine.activations > 0).sum(1)
    a = fine.methods.index("activation")
    for b in range(len(n_active)):
        assert (fine.logits[a, n_active[b]:, b] == 0).all()
        assert fine.logits[a, n_active[b] - 1, b] != 0


def test_first_deletion_is_close_to_but_not_exactly_the_top_contribution(fine) -> None:
    """Contributions are exact for the input as it is; deleting a concept changes the B-cos
    dynamic scales after the bottleneck, so the logit drops by roughly, not exactly, the
    deleted contribution."""
    c = fine.methods.index("contribution")
    drop = fine.logits[c, 0] - fine.logits[c, 1]
    top = fine.importances["contribution"].amax(1)
    assert ((drop / top > 0.3) & (drop / top < 3)).all()
    assert ((drop - top).abs() / top > 1e-3).all()


def test_exact_contributions_beat_random_and_activation(deletion) -> None:
    auc = deletion.logit_auc()
    c = deletion.methods.index("contribution")
    for method in ("random", "activation"):
        d = auc[deletion.methods.index(method)] - auc[c]
        assert d.mean() > 3 * d.std() / len(d) ** 0.5, method
    curves = deletion.logit_curves()
    assert (curves[c] <= curves[deletion.methods.index("random")] + 1e-6).all()


def test_always_on_concepts_are_kept(fact_toy, batch, deletion) -> None:
    x, labels = batch
    acts = deletion.activations
    on = always_on(acts, 0.9)
    assert torch.equal(on, ((acts > 0).float().mean(0) >= 0.9).nonzero().flatten())
    kept = concept_deletion(fact_toy, x[:8], labels[:8], ["contribution", "random"],
                            exclude=on, steps=6)
    assert int(kept.counts[-1]) == 128 - len(on) and len(kept.counts) <= 7
    tail = BottleneckTail(as_fact(fact_toy), x[:8], "layer2")
    only = torch.zeros(128, dtype=torch.bool)
    only[on] = True
    with torch.no_grad():
        expect = tail(tail.codes * only[None, :, None, None], torch.arange(8))
    top1 = tail.logits.argmax(1)
    assert torch.allclose(kept.logits[:, -1], expect.gather(1, top1[:, None])[:, 0].expand(2, -1),
                          atol=1e-5)
    with pytest.raises(IerfError, match=r"\(0, 1\]"):
        always_on(acts, 0.0)


def test_bad_arguments(fact_toy, batch) -> None:
    x, labels = batch
    with pytest.raises(IerfError, match="unknown importance method.*saliency"):
        concept_deletion(fact_toy, x[:2], methods=["saliency"])
    with pytest.raises(IerfError, match="excluded concepts"):
        concept_deletion(fact_toy, x[:2], exclude=[128])
    with pytest.raises(IerfError, match="labels must be shaped"):
        concept_deletion(fact_toy, x[:2], labels[:3], methods=["random"])
    with pytest.raises(IerfError, match="every concept is excluded"):
        concept_deletion(fact_toy, x[:2], exclude=range(128))


def test_bench_writes_table_and_curves(tmp_path, capsys) -> None:
    rc = main(["bench", "fact-deletion", "--n", "12", "--steps", "8", "--ig-steps", "4",
               "--always-on", "0.9", "-o", str(tmp_path)])
    assert rc == 0
    out = capsys.readouterr().out
    assert "FaCT concept deletion" in out and "contribution" in out
    assert "accuracy AUC (always-on kept)" in out
    for name in ("deletion/table.md", "deletion/table.csv", "deletion/figure.png", "curves.png"):
        assert (tmp_path / name).stat().st_size > 0
