"""Ground truth for the Interlayer Concept Graph on the synthetic benchmark (IERF Sec. VI;
GIG Sec. 3.3, 4.2): concept labels from iERFs, (a) class nodes' parents are concepts of the
class's parts, (b) part concepts draw their strongest ICAT edges from that part's colour /
shape / texture concepts."""

from __future__ import annotations

from itertools import combinations

import pytest
import torch

import ierf
from ierf.data.synthetic import CLASS_PARTS, PART_TYPES, generate
from ierf.errors import IerfError
from ierf.graph import ConceptGraph, Edges, LayerNodes
from ierf.graph.ground_truth import (
    _null,
    benchmark_class_parts,
    benchmark_part_attributes,
    class_parent_precision,
    concept_ierfs,
    concept_labels,
    fit_bases,
    ground_truth_report,
    label_mass,
    part_edge_agreement,
    permute_weights,
    relevance_target,
)
from ierf.local.srd import SRD
from ierf.targets import PFVTarget

torch.set_num_threads(2)
A, B = "layer2", "layer3"
#: an effect counts as "beating chance by a clear margin" at this many null standard
#: deviations (one-sided p ≈ 0.001), fixed before measuring
Z_MIN = 3.0


# -- hand-built tensors ------------------------------------------------------------------------

def nodes(layer: str, importance: torch.Tensor) -> LayerNodes:
    K, T = importance.shape
    return LayerNodes(layer, torch.arange(K), [f"{layer} #{k}" for k in range(K)], importance,
                      torch.ones(K), torch.ones(K), 0.1, torch.zeros(T))


def toy_graph(imp_a: torch.Tensor, imp_b: torch.Tensor, edges_ab: torch.Tensor,
              classes: list[int]) -> ConceptGraph:
    T = len(classes)
    err = torch.full((1, edges_ab.shape[1]), 99.0)      # a huge error edge: must be ignored
    return ConceptGraph(["a", "b", "output"], {"a": nodes("a", imp_a), "b": nodes("b", imp_b)},
                        torch.tensor(classes), [str(c) for c in classes], torch.zeros(T),
                        torch.zeros(T), [Edges("a", "b", torch.cat([edges_ab, err]), "ig"),
                                         Edges("b", "output", torch.cat([imp_b, err[:, :T]]),
                                               "ig")])


def test_label_mass_and_concept_labels() -> None:
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = 1
    labels[0, 2:, 2:] = 2
    maps = torch.zeros(3, 1, 4, 4)
    maps[0, 0, :2, :2] = 1.0            # all on code 1
    maps[0, 0, 0, 3] = 1.0              # plus one background pixel
    maps[0, 0, 3, 3] = -5.0             # negative relevance does not count
    maps[1, 0, 2:, 2:] = 1.0            # 4 on code 2 ...
    maps[1, 0, 0, 0] = 2.0              # ... and 2 on code 1
    m = label_mass(maps, labels, 3)
    torch.testing.assert_close(m, torch.tensor([[1.0, 4.0, 0.0], [0.0, 2.0, 4.0],
                                                [0.0, 0.0, 0.0]]))
    lab = concept_labels(maps, {"part": labels}, keys=["part"], n_labels={"part": 3})
    assert lab.dominant["part"].tolist() == [1, 2, 0]        # no labelled mass → 0
    torch.testing.assert_close(lab.purity["part"], torch.tensor([1.0, 4 / 6, 0.0]))
    torch.testing.assert_close(lab.foreground["part"], torch.tensor([0.8, 1.0, 0.0]))
    # maps at a coarser resolution (2 x 2 sums): label maps are area-pooled as one-hot;
    # every 2 x 2 cell here holds one code, so the mass is the same
    coarse = label_mass(maps[:2].reshape(2, 1, 2, 2, 2, 2).sum((3, 5)), labels, 3)
    torch.testing.assert_close(coarse, m[:2])
    mixed = torch.ones(1, 1, 1, 1)                    # one cell over all 16 pixels
    torch.testing.assert_close(label_mass(mixed, labels, 3), torch.tensor([[0.5, 0.25, 0.25]]))
    with pytest.raises(IerfError, match="label codes"):
        label_mass(maps, labels, 2)
    with pytest.raises(IerfError, match="same batch"):
        label_mass(maps, labels.expand(2, 4, 4), 3)
    with pytest.raises(IerfError, match="no label map"):
        concept_labels(maps, {"part": labels}, keys=["colour"])


def test_null_is_the_exact_distribution_of_k_random_parents() -> None:
    scores = torch.tensor([[1.0, 0.0, 1.0, 0.0, 0.0, 1 / 3], [0.0, 0.0, 0.0, 0.0, 1.0, 2 / 3]])
    for k in (1, 2, 4):
        mean, var = _null(scores, k)
        subsets = torch.tensor(list(combinations(range(6), k)))
        draws = scores[:, subsets].mean(-1)                       # (T, all k-subsets)
        torch.testing.assert_close(mean, draws.mean(1))
        torch.testing.assert_close(var, draws.var(1, correction=0))


def test_class_parent_precision_on_a_known_graph() -> None:
    # concepts of layer b labelled with parts 1, 2, 3, 0 (0 = no part); classes 0 and 3
    parts = torch.tensor([1, 2, 3, 0])
    class_parts = torch.tensor([[1, 2], [1, 3], [1, 5], [3, 4]])
    imp_b = torch.tensor([[5.0, 0.0], [4.0, 1.0], [-9.0, 2.0], [0.0, 3.0]])
    g = toy_graph(torch.zeros(3, 2), imp_b, torch.zeros(3, 4), [0, 3])
    r = class_parent_precision(g, parts, class_parts, k=2)
    assert r["layer"] == "b" and r["parents"] == [[0, 1], [3, 2]]
    assert r["per_class"] == [1.0, 0.5]              # class 3 = parts {3, 4}: concepts 2 only
    assert r["chance_per_class"] == [0.5, 0.25]
    assert r["precision"] == 0.75 and r["chance"] == 0.375 and r["z"] > 0
    # a pruned graph: nodes keep their basis indices
    pruned = ConceptGraph(g.layers, {"a": g.nodes["a"],
                                     "b": g.nodes["b"].select(torch.tensor([1, 2]))},
                          g.classes, g.class_names, g.logits, g.probs, g.edges)
    assert class_parent_precision(pruned, parts, class_parts, k=1)["parents"] == [[1], [2]]
    ranked = class_parent_precision(g, parts, class_parts, k=1, importance=-imp_b)
    assert ranked["parents"] == [[2], [0]]
    with pytest.raises(IerfError, match="k must be"):
        class_parent_precision(g, parts, class_parts, k=5)
    with pytest.raises(IerfError, match="no concept layer"):
        class_parent_precision(g, parts, class_parts, layer="output")
    with pytest.raises(IerfError, match="class_parts"):
        class_parent_precision(g, parts, class_parts[:2])
    with pytest.raises(IerfError, match="concept_parts"):
        class_parent_precision(g, parts[:2], class_parts)


def test_part_edge_agreement_on_a_known_graph() -> None:
    # part code 1 = (colour 1, shape 1, texture 1), part code 2 = (2, 2, 2)
    part_attrs = torch.tensor([[0, 0, 0], [1, 1, 1], [2, 2, 2]])
    src_attrs = torch.tensor([[1, 1, 1], [1, 2, 2], [2, 2, 2], [0, 0, 0]])
    tgt_parts = torch.tensor([1, 2, 0])              # target 2 has no part: left out
    W = torch.tensor([[3.0, 0.0, 9.0], [2.0, 1.0, 9.0], [0.0, 5.0, 9.0], [1.0, 4.0, 9.0]])
    g = toy_graph(torch.zeros(4, 1), torch.zeros(3, 1), W, [0])
    r = part_edge_agreement(g, "a", "b", tgt_parts, src_attrs, part_attrs, k=2)
    assert r["n_targets"] == 2 and r["targets"] == [0, 1]
    # target 0 (part 1): parents 0 (1,1,1) and 1 (1,2,2); target 1 (part 2): parents 2 and 3
    assert r["colour"]["agreement"] == pytest.approx((1.0 + 0.5) / 2)
    assert r["shape"]["agreement"] == pytest.approx((0.5 + 0.5) / 2)
    assert r["attributes"]["agreement"] == pytest.approx(((3 + 1) / 6 + 3 / 6) / 2)
    assert r["any"]["agreement"] == pytest.approx((1.0 + 0.5) / 2)
    assert r["colour"]["chance"] == pytest.approx((2 / 4 + 1 / 4) / 2)
    only = part_edge_agreement(g, "a", "b", tgt_parts, src_attrs, part_attrs, k=1,
                               part_level=torch.tensor([False, True, True]))
    assert only["targets"] == [1] and only["colour"]["agreement"] == 1.0
    with pytest.raises(IerfError, match="no concept edges"):
        part_edge_agreement(g, "b", "a", tgt_parts, src_attrs, part_attrs)
    with pytest.raises(IerfError, match="no part-level"):
        part_edge_agreement(g, "a", "b", torch.zeros(3, dtype=torch.long), src_attrs,
                            part_attrs)
    with pytest.raises(IerfError, match="part_attributes"):
        part_edge_agreement(g, "a", "b", tgt_parts, src_attrs, part_attrs[:, :2])


def test_permute_weights_shuffles_concept_rows_per_column() -> None:
    g = toy_graph(torch.randn(5, 2), torch.randn(4, 2), torch.randn(5, 4), [1, 2])
    p = permute_weights(g, seed=3)
    for e, f in zip(g.edges, p.edges):
        assert torch.equal(e.weights[-1], f.weights[-1])                    # error row kept
        assert torch.equal(e.weights[:-1].sort(0).values, f.weights[:-1].sort(0).values)
        assert not torch.equal(e.weights, f.weights)
    assert torch.equal(p.nodes["b"].importance, p.edges[-1].weights[:-1])   # class edges
    assert torch.equal(g.nodes["a"].importance.sort(0).values,
                       p.nodes["a"].importance.sort(0).values)


def test_benchmark_tables() -> None:
    cp, pa = benchmark_class_parts(), benchmark_part_attributes()
    assert cp.shape == (len(CLASS_PARTS), 2) and cp.min() >= 1
    assert pa.shape == (len(PART_TYPES) + 1, 3) and (pa[0] == 0).all() and (pa[1:] > 0).all()
    assert len({tuple(r) for r in pa[1:].tolist()}) == len(PART_TYPES)     # distinct triples


# -- toy-resnet on the benchmark ---------------------------------------------------------------

@pytest.fixture(scope="module")
def model() -> ierf.Model:
    return ierf.load_model("toy-resnet")


def test_concept_ierfs_are_coefficient_weighted_sums_of_pfv_ierfs(model) -> None:
    """``concept_ierfs`` = Σ_p u_pq⁺ iERF_p: its target puts relevance u_pq⁺ on position p
    (checked against :class:`PFVTarget` at two positions) and the engine is linear (the map
    is the sum of the maps of two halves of the positions). Checked this way, not with all
    64 PFV iERFs, because a vmapped SRD backward over many targets of one image is slow."""
    basis = fit_bases(model, [B], n_concepts=4, n_images=4)[B]
    x = model.normalize(generate(1, seed=5, split="test").images)
    maps = concept_ierfs(model, basis, x)                                    # (4, 1, H, W)
    with torch.no_grad():
        W = basis.encode(model.pfvs(x, [B])[B].vectors).clamp_min(0)         # (1, N, K)
    q = int(W.sum(1).argmax())
    w, half = W[..., q], torch.arange(W.shape[1]) < W.shape[1] // 2
    p = W[0, :, q].topk(2).indices.tolist()
    onehot = torch.zeros_like(w)
    onehot[0, p[0]] = 2.0
    got = SRD(model).ierfs(x, [relevance_target(B, w * half),
                               relevance_target(B, w * ~half),
                               relevance_target(B, onehot),
                               PFVTarget(B, p[0]), PFVTarget(B, p[1]),
                               relevance_target(B, w * 0)])
    scale = maps[q].abs().max()
    assert scale > 0
    torch.testing.assert_close(maps[q], got[0] + got[1], atol=1e-5 * scale, rtol=1e-4)
    torch.testing.assert_close(got[2], 2 * got[3], atol=1e-6 * got[3].abs().max(), rtol=1e-4)
    assert not torch.allclose(got[3], got[4]) and (got[5] == 0).all()
    with pytest.raises(IerfError, match="images"):
        concept_ierfs(model, basis, x[0])
    with pytest.raises(IerfError, match="weights must be"):
        relevance_target(B, w[0])


@pytest.fixture(scope="module")
def report(model) -> dict:
    r = ground_truth_report(model, [A, B], n_concepts=16, n_fit=16, n_images=24, n_steps=4,
                            k=3, seed=0, n_permutations=200, random_graph=False)
    print("\nlabel purity (mean over concepts) / uniform-map floor:", r["uniform_purity"])
    for layer, d in r["labels"].items():
        print(f"  {layer}:", {k: round(v["purity"], 3) for k, v in d.items()})
    for layer, d in r["class_parents"].items():
        print(f"(a) {layer}: precision {d['precision']:.3f} chance {d['chance']:.3f} "
              f"null sd {d['null_sd']:.3f} z {d['z']:.2f} permuted {d['permuted']}")
    for pair, d in r["part_edges"].items():
        for a in ("colour", "shape", "texture", "attributes", "any"):
            print(f"(b) {pair} {a}: agreement {d[a]['agreement']:.3f} chance "
                  f"{d[a]['chance']:.3f} z {d[a]['z']:.2f} permuted p {d[a]['permuted']['p']}")
    print("seconds", r["seconds"])
    return r


def test_report_is_plain_numbers(report) -> None:
    import json
    json.dumps(report)
    assert report["settings"]["layers"] == [A, B]
    assert set(report["labels"][B]) == {"part", "colour", "shape", "texture"}
    for layer in (A, B):
        d = report["class_parents"][layer]
        # the analytic null agrees with 200 permuted graphs
        assert abs(d["permuted"]["mean"] - d["chance"]) < 3 * d["null_sd"] / 200 ** 0.5 + 1e-9
        assert d["permuted"]["sd"] == pytest.approx(d["null_sd"], rel=0.25)


def test_concepts_are_purer_than_a_uniform_map(report) -> None:
    for layer in (A, B):
        for key, d in report["labels"][layer].items():
            assert d["purity"] > report["uniform_purity"][key], (layer, key)


def test_a_class_nodes_draw_on_concepts_of_their_parts(report) -> None:
    d = report["class_parents"][B]
    assert d["z"] >= Z_MIN, d
    assert d["permuted"]["p"] <= 0.01, d


def test_b_part_concepts_draw_on_their_attributes(report) -> None:
    d = report["part_edges"][f"{A}->{B}"]["attributes"]
    assert d["z"] >= Z_MIN, d
    assert d["permuted"]["p"] <= 0.01, d
