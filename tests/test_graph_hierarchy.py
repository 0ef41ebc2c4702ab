"""Supernodes from the bisecting k-means split tree (GIG App. B) and exact collapsing (Eq. 14)."""

from __future__ import annotations

import json

import pytest
import torch
from captum.attr import IntegratedGradients
from torch import nn

import ierf
from ierf.concepts import BisectingSphericalKMeans, ConceptExtractor
from ierf.concepts.basis import ConceptBasis
from ierf.concepts.extractors.kmeans import ClusterTree, cluster_means
from ierf.data.synthetic import generate
from ierf.errors import IerfError
from ierf.graph import alignment_score, build_graph, from_json, to_json
from ierf.graph.hierarchy import annotate, collapse, supernodes
from ierf.models import Subnetwork

torch.set_num_threads(2)
A, B = "layer2", "layer3"
STEPS = 4


@pytest.fixture(scope="module")
def setup() -> dict:
    model = ierf.load_model("toy-resnet")
    with torch.no_grad():
        fit = model.pfvs(model.normalize(generate(16, seed=1, split="train").images), [A, B])
    bases, pfvs = {}, {}
    for layer, k in ((A, 8), (B, 12)):
        X = fit[layer].vectors.flatten(0, 1)
        pfvs[layer] = X[torch.randperm(len(X), generator=torch.Generator().manual_seed(0))[:256]]
        km = BisectingSphericalKMeans(k, center=pfvs[layer].mean(0), n_init=1, max_iter=10,
                                      alpha=0.01, lasso_max_iter=200,
                                      lasso_tol=1e-2).fit(pfvs[layer])
        bases[layer] = ConceptBasis.bind(km, model, layer)
    x = model.normalize(generate(2, seed=0, split="test").images)
    graph = build_graph(model, bases, x, [0, 3, 7], n_steps=STEPS, progress=False)
    return {"model": model, "bases": bases, "pfvs": pfvs, "x": x, "graph": graph}


def test_every_cluster_has_a_chain_of_parents_to_the_root(setup) -> None:
    km = setup["bases"][B].extractor
    tree, K = km.tree, 12
    assert tree.parents.shape == (2 * K - 1,) and tree.root == K
    assert int(tree.parents[tree.root]) == -1
    depth = tree.depth()
    assert (depth[:K] >= 1).all() and depth[tree.root] == 0
    for leaf in range(K):                      # climbing from a leaf reaches the root
        node, steps = leaf, 0
        while int(tree.parents[node]) >= 0:
            node, steps = int(tree.parents[node]), steps + 1
        assert node == tree.root and steps == depth[leaf]
    # sizes: leaves are the cluster sizes, a split cluster holds its two halves
    assert torch.equal(tree.sizes[:K], torch.bincount(km.labels_, minlength=K))
    has = tree.parents >= 0
    children = torch.zeros(2 * K - 1, dtype=torch.long).index_add_(0, tree.parents[has],
                                                                   tree.sizes[has])
    internal = torch.arange(2 * K - 1) >= K
    assert torch.equal(children[internal], tree.sizes[internal])
    # split order: the largest clusters first, so split sizes never grow by more than 2×
    assert (tree.sizes[K + 1:] <= tree.sizes[K:-1] * 2).all()


def test_cuts_partition_the_concepts(setup) -> None:
    km = setup["bases"][B].extractor
    tree, X = km.tree, setup["pfvs"][B] - km.center
    for g in range(1, 13):
        cut = tree.cut(n_groups=g)
        assert len(cut) == g
        owner = tree.assign(cut)
        assert set(owner.tolist()) == set(cut.tolist())
        for node in cut.tolist():       # the members of a supernode are the leaves under it
            assert torch.equal(tree.leaves(node), (owner == node).nonzero().flatten())
    assert torch.equal(tree.cut(n_groups=12), torch.arange(12))
    assert tree.cut(level=0).tolist() == [tree.root]
    deep = tree.cut(level=int(tree.depth().max()))
    assert torch.equal(deep, torch.arange(12))
    # an internal node's vector is the mean of its members' centred PFVs, like a leaf's
    cut = tree.cut(n_groups=4)
    merged = torch.searchsorted(cut, tree.assign(cut))[km.labels_]
    torch.testing.assert_close(tree.node_vectors(km.get_dictionary())[:, cut],
                               cluster_means(X, merged, 4), atol=1e-5, rtol=1e-5)


def test_tree_survives_save_and_load(setup, tmp_path) -> None:
    basis = setup["bases"][A]
    loaded = ConceptBasis.load(basis.save(tmp_path / "basis"))
    for got in (loaded.extractor.tree, basis.to("cpu").extractor.tree):
        assert torch.equal(got.parents, basis.extractor.tree.parents)
        assert torch.equal(got.sizes, basis.extractor.tree.sizes)
    basis.extractor.save(tmp_path / "km")
    assert torch.equal(ConceptExtractor.load(tmp_path / "km").tree.parents,
                       basis.extractor.tree.parents)


def test_supernodes_are_the_graph_nodes_under_each_cluster(setup) -> None:
    g, basis = setup["graph"], setup["bases"][B]
    tree = basis.extractor.tree
    groups = supernodes(g, B, basis, n_groups=3)
    owner = tree.assign(tree.cut(n_groups=3))
    for name, ids in groups.items():
        node = int(name.split(":")[1])
        assert ids == [f"{B}:{int(k)}" for k in tree.leaves(node)] and len(ids) > 1
    grouped = {i for ids in groups.values() for i in ids}
    alone = [k for k in range(12) if f"{B}:{k}" not in grouped]
    assert all((owner == owner[k]).sum() == 1 for k in alone)
    pruned = g.prune(top_k_per_class=2, top_shared=0)
    kept = set(pruned.node_ids(B))
    for ids in supernodes(pruned, B, tree, level=1).values():
        assert set(ids) <= kept


def test_collapsed_edges_are_sums_of_member_edges_exactly(setup) -> None:
    g, basis = setup["graph"], setup["bases"][B]
    groups = supernodes(g, B, basis, n_groups=4)
    c = collapse(g, B, groups)
    ids, new = g.node_ids(B), c.node_ids(B)
    assert len(new) == 4 + 1 and c.nodes[B].index.max() >= 12     # tree nodes ≥ K
    for name, members in groups.items():
        j, rows = new.index(name), [ids.index(m) for m in members]
        ref_in = g.edges[0].weights[:, rows[0]].clone()            # A → B: columns
        ref_out = g.edges[1].weights[rows[0]].clone()              # B → output: rows
        ref_imp = g.nodes[B].importance[rows[0]].clone()
        ref_gap = g.edges[0].gap[rows[0]].clone()
        for r in rows[1:]:
            ref_in += g.edges[0].weights[:, r]
            ref_out += g.edges[1].weights[r]
            ref_imp += g.nodes[B].importance[r]
            ref_gap += g.edges[0].gap[r]
        assert torch.equal(c.edges[0].weights[:, j], ref_in)
        assert torch.equal(c.edges[1].weights[j], ref_out)
        assert torch.equal(c.nodes[B].importance[j], ref_imp)
        assert torch.equal(c.edges[0].gap[j], ref_gap)
    assert torch.equal(c.edges[1].weights[-1], g.edges[1].weights[-1])   # error node
    # the books still balance: Σ_q ICAT + error − gap is unchanged per class
    for e_old, e_new in zip(g.edges[1:], c.edges[1:]):
        torch.testing.assert_close(e_new.weights.sum(0), e_old.weights.sum(0))
    assert torch.equal(c.nodes[B].importance, c.edges[1].weights[:-1])   # class edges
    assert c.metadata["collapsed"][B] == groups
    # collapsing the source side of A → B sums rows the same way
    ca = collapse(g, A, supernodes(g, A, setup["bases"][A], n_groups=2))
    torch.testing.assert_close(ca.edges[0].weights.sum(0), g.edges[0].weights.sum(0))


def test_collapsed_in_edge_is_icat_of_the_summed_score(setup) -> None:
    """IG is linear in the attributed function: the edge into a supernode G equals IG of
    ``S_G = Σ_{t∈G} S_t`` (Eq. 13 summed), computed here independently with Captum."""
    s, g = setup, setup["graph"]
    groups = supernodes(g, B, s["bases"][B], n_groups=3)
    c = collapse(g, B, groups)
    name, members = next(iter(groups.items()))
    G = [int(m.split(":")[1]) for m in members]
    sub, a, b = Subnetwork(s["model"], A, B), s["bases"][A], s["bases"][B]
    with torch.no_grad():
        X_a = sub.pfvs_a(s["x"]).vectors
        U_a, U_b = a.encode(X_a), b.encode(sub(X_a))
    offset = b.decode(torch.zeros(1, 12))[0]

    class SumOfScores(nn.Module):
        def forward(self, U: torch.Tensor) -> torch.Tensor:
            Ub = U_b.repeat(len(U) // len(U_b), 1, 1)
            return alignment_score(sub(a.decode(U)), Ub, b.dictionary, G, offset).sum(1)

    ref = IntegratedGradients(SumOfScores()).attribute(
        U_a, baselines=torch.zeros_like(U_a), n_steps=STEPS,
        method="gausslegendre").sum(1).mean(0).detach()
    got = c.edges[0].weights[:-1, c.node_ids(B).index(name)]
    torch.testing.assert_close(got, ref, atol=1e-5 * ref.abs().max().item(), rtol=1e-4)


def test_supernodes_round_trip_through_json(setup, tmp_path) -> None:
    g, basis = setup["graph"], setup["bases"][B]
    groups = supernodes(g, B, basis, level=1)
    shown = annotate(g, groups)
    path = to_json(shown, tmp_path / "g.json")
    data = json.loads(path.read_text())
    assert data["qParams"]["supernodes"] == [[k, *v] for k, v in groups.items()]
    assert "supernodes" not in data["metadata"]["ierf"]["metadata"]
    back = from_json(path)
    assert back.metadata["supernodes"] == groups
    c = collapse(shown, B, groups)
    assert "supernodes" not in c.metadata      # every group became one node
    back = from_json(to_json(c, tmp_path / "c.json"))
    assert back.node_ids(B) == c.node_ids(B)
    for e_old, e_new in zip(c.edges, back.edges):
        torch.testing.assert_close(e_new.weights, e_old.weights)
    assert back.metadata["collapsed"] == c.metadata["collapsed"]
    # groups edited by hand (e.g. in Neuronpedia) are read back, duplicate names kept apart
    data["qParams"]["supernodes"] = [["eyes", f"{B}:0", f"{B}:1"], ["eyes", f"{A}:2"]]
    (tmp_path / "h.json").write_text(json.dumps(data))
    assert from_json(tmp_path / "h.json").metadata["supernodes"] == {
        "eyes": [f"{B}:0", f"{B}:1"], "eyes (2)": [f"{A}:2"]}
    named = collapse(g, B, {"eyes": [f"{B}:0", f"{B}:1"]})
    assert named.node_ids(B)[0] == f"{B}:0" and named.nodes[B].labels[0] == "eyes"
    again = collapse(named, B, [[f"{B}:0", f"{B}:2"]])         # collapsing twice: provenance
    assert again.metadata["collapsed"][B] == {f"{B}:0": [f"{B}:0", f"{B}:1", f"{B}:2"]}
    # groups whose members were pruned away are exported without them
    pruned = annotate(g, groups).prune(top_k_per_class=1, top_shared=0)
    kept = set(pruned.node_ids(B))
    data = json.loads(to_json(pruned, tmp_path / "p.json").read_text())
    assert all(len(grp) > 1 and set(grp[1:]) <= kept for grp in data["qParams"]["supernodes"])


def test_bad_input_is_refused(setup, tmp_path) -> None:
    g, basis = setup["graph"], setup["bases"][B]
    tree = basis.extractor.tree
    with pytest.raises(IerfError, match="exactly one"):
        supernodes(g, B, tree, n_groups=2, level=1)
    with pytest.raises(IerfError, match="n_groups"):
        tree.cut(n_groups=13)
    with pytest.raises(IerfError, match="not a cut"):
        tree.assign(torch.tensor([tree.root, 0]))
    with pytest.raises(IerfError, match="split tree"):
        ClusterTree(torch.tensor([1, 2, -1]), torch.ones(3, dtype=torch.long))
    with pytest.raises(IerfError, match="leaves"):
        supernodes(g, B, setup["bases"][A])
    for twice in ([[f"{B}:0", f"{B}:1"], [f"{B}:1", f"{B}:2"]],
                  [[f"{B}:0", f"{B}:1"], [f"{B}:0", f"{B}:2"]]):
        with pytest.raises(IerfError, match="more than one group"):
            collapse(g, B, twice)
    with pytest.raises(IerfError, match="not a concept node"):
        collapse(g, B, [[f"{B}:0", f"{B}:error"]])
    with pytest.raises(IerfError, match="clash"):
        collapse(g, B, {f"{B}:5": [f"{B}:0", f"{B}:1"]})
    with pytest.raises(IerfError, match="normalising"):
        collapse(g.normalised(), B, [[f"{B}:0", f"{B}:1"]])
    with pytest.raises(IerfError, match="already collapsed"):
        supernodes(collapse(g, B, supernodes(g, B, tree, n_groups=2)), B, tree, n_groups=2)
    with pytest.raises(IerfError, match="concept layer"):
        collapse(g, "output", [["output:0"]])
    with pytest.raises(IerfError, match="no node"):
        annotate(g, {"x": ["layer9:0"]})
    bare = BisectingSphericalKMeans(4)
    bare.load_state_tensors({"dictionary": torch.randn(8, 4)})
    with pytest.raises(IerfError, match="no split tree"):
        supernodes(g, B, bare, n_groups=2)
    data = json.loads(to_json(g, tmp_path / "g.json").read_text())
    data["qParams"]["supernodes"] = [["x", "layer9:0"]]
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(IerfError, match="does not exist"):
        from_json(tmp_path / "bad.json")
