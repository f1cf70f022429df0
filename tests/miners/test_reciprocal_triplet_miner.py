"""ReciprocalTripletMiner against the official rules, written plainly (loops, float64) in this file:

S = exp(-d) + [same label] (diagonal included); row i's top-k by S (itself included); positives of i = mutual
neighbours j != i; negatives = everything else (the anchor itself only with exclude_self_negative=False); anchors need
>= 2 positives (and a negative); each valid anchor gets triplets_per_anchor (j, k) drawn with replacement.
"""

import math
from collections import Counter

import pytest
import torch
from pytorch_metric_learning.distances import CosineSimilarity

from pml_hyperbolic.distances import PoincareDistance
from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.miners import ReciprocalTripletMiner


def ball_points(n, dim, seed, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return ToPoincare(c=0.1, clip_r=2.3)(torch.randn(n, dim, generator=g, dtype=torch.float64) * scale)


def reference_sets(x, labels, topk, exclude_self=True, c=0.1):
    """(positives, negatives) per point: python sets from the official similarity, plain loops in float64."""
    n = len(x)
    sim = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            sq = float(((x[i] - x[j]) ** 2).sum())
            arg = 1 + 2 * c * sq / ((1 - c * float((x[i] ** 2).sum())) * (1 - c * float((x[j] ** 2).sum())))
            d = math.acosh(arg) / math.sqrt(c)
            sim[i][j] = math.exp(-d) + (labels is not None and int(labels[i]) == int(labels[j]))
    knn = [set(sorted(range(n), key=lambda j: -sim[i][j])[: min(topk, n)]) for i in range(n)]
    pos = [{j for j in knn[i] if j != i and i in knn[j]} for i in range(n)]
    neg = [{j for j in range(n) if j not in pos[i] and not (exclude_self and j == i)} for i in range(n)]
    return pos, neg


@pytest.mark.parametrize("exclude_self", [True, False])
@pytest.mark.parametrize("with_labels", [True, False])
def test_triplets_follow_the_official_rules(exclude_self, with_labels):
    n, topk, t = 40, 5, 30
    x = ball_points(n, 6, seed=1)
    labels = torch.arange(n) % 16 if with_labels else None  # 2 or 3 per class: same-label partners fit in the top-5
    miner = ReciprocalTripletMiner(topk=topk, triplets_per_anchor=t, exclude_self_negative=exclude_self, generator=0)
    if with_labels:
        a, p, ng = miner(x, labels)
    else:
        a, p, ng = miner.mine_similarity(-PoincareDistance()(x))
    pos, neg = reference_sets(x, labels, topk, exclude_self)
    valid = [i for i in range(n) if len(pos[i]) >= 2 and len(neg[i]) >= 1]
    assert 0 < len(valid) < n  # the test covers both valid and skipped anchors
    counts = Counter(a.tolist())
    assert sorted(counts) == valid and set(counts.values()) == {t}
    assert torch.equal(a, torch.tensor(valid).repeat_interleave(t))  # grouped by anchor, in index order
    for i, j, k in zip(a.tolist(), p.tolist(), ng.tolist()):
        assert j in pos[i] and k in neg[i]
    if with_labels:  # same-label pairs rank first: all same-label partners are positives, never negatives
        for i in range(n):
            same = {j for j in range(n) if j != i and labels[j] == labels[i]}
            assert same <= pos[i]
        assert ((labels[a] != labels[ng]) | (a == ng)).all()
    if not exclude_self:
        assert (a == ng).any()  # the official sampler lets the anchor be its own negative
    else:
        assert (a != ng).all()


def test_sampling_is_uniform_over_the_sets():
    x = ball_points(30, 6, seed=2)
    miner = ReciprocalTripletMiner(topk=8, triplets_per_anchor=4000, generator=0)
    a, p, ng = miner.mine_similarity(-PoincareDistance()(x))
    pos, neg = reference_sets(x, None, 8)
    i = int(a[0])
    for sampled, allowed in ((p[a == i], pos[i]), (ng[a == i], neg[i])):
        freq = Counter(sampled.tolist())
        assert set(freq) == allowed
        for count in freq.values():
            assert abs(count / 4000 - 1 / len(allowed)) < 4 * math.sqrt(1 / len(allowed) / 4000) + 1e-3


def test_reproducible_under_a_seed():
    x, labels = ball_points(50, 6, seed=3), torch.arange(50) % 10
    first = ReciprocalTripletMiner(topk=10, generator=7)
    second = ReciprocalTripletMiner(topk=10, generator=7)
    out1, out2 = first(x, labels), second(x, labels)
    assert all(torch.equal(u, v) for u, v in zip(out1, out2))
    assert not all(torch.equal(u, v) for u, v in zip(first(x, labels), out1))  # the stream moves on
    third = ReciprocalTripletMiner(topk=10, generator=torch.Generator().manual_seed(7))
    assert all(torch.equal(u, v) for u, v in zip(third(x, labels), out1))  # an int seeds a torch.Generator
    global_rng = ReciprocalTripletMiner(topk=10)
    torch.manual_seed(1)
    g1 = global_rng(x, labels)
    torch.manual_seed(1)
    assert all(torch.equal(u, v) for u, v in zip(global_rng(x, labels), g1))


def test_small_and_degenerate_sets():
    miner = ReciprocalTripletMiner(topk=20, triplets_per_anchor=5, generator=0)
    for n in (1, 2, 3, 20):  # n <= topk: every pair is mutual, nothing is left as a negative
        a, p, ng = miner(ball_points(n, 4, seed=n), torch.arange(n))
        assert len(a) == len(p) == len(ng) == 0 and a.dtype == torch.long
    official = ReciprocalTripletMiner(topk=20, triplets_per_anchor=5, exclude_self_negative=False, generator=0)
    a, p, ng = official(ball_points(10, 4, seed=0), torch.arange(10))
    assert len(a) == 50 and torch.equal(a, ng)
    # points at 0, 1, 10, 11 on a line, topk = 3: mutual pairs 0-1, 1-2, 2-3, so 0 and 3 have a single mutual
    # neighbour and are skipped
    pos = torch.tensor([0.0, 1.0, 10.0, 11.0])
    a, p, ng = ReciprocalTripletMiner(topk=3, triplets_per_anchor=4, generator=0).mine_similarity(
        -(pos[:, None] - pos[None, :]).abs()
    )
    assert a.tolist() == [1] * 4 + [2] * 4
    assert set(p[:4].tolist()) <= {0, 2} and set(ng[:4].tolist()) == {3}
    assert set(p[4:].tolist()) <= {1, 3} and set(ng[4:].tolist()) == {0}


def test_any_similarity_matrix_and_inverted_distances():
    x = torch.nn.functional.normalize(torch.randn(30, 5, generator=torch.Generator().manual_seed(4)), dim=1)
    cos = ReciprocalTripletMiner(topk=6, generator=0, distance=CosineSimilarity())
    a, p, ng = cos(x, torch.arange(30))
    b = ReciprocalTripletMiner(topk=6, generator=0).mine_similarity(x @ x.t())
    assert all(torch.equal(u, v) for u, v in zip((a, p, ng), b))
    neg_dist = ReciprocalTripletMiner(topk=6, generator=0).mine_similarity(-torch.cdist(x, x))
    assert torch.equal(neg_dist[0], a)  # the same neighbourhoods (cosine and L2 rank alike on the sphere)
    sim64 = (x @ x.t()).double()
    before = sim64.clone()
    ReciprocalTripletMiner(topk=6).mine_similarity(sim64)
    assert torch.equal(sim64, before)  # the input is not modified


def test_bad_inputs_raise_clear_errors():
    for kwargs, match in (
        ({"topk": 2}, "topk"),
        ({"topk": 5.0}, "topk"),
        ({"triplets_per_anchor": 0}, "triplets_per_anchor"),
        ({"generator": "seed"}, "generator"),
    ):
        with pytest.raises(ValueError, match=match):
            ReciprocalTripletMiner(**kwargs)
    miner = ReciprocalTripletMiner(topk=3)
    with pytest.raises(ValueError, match="square"):
        miner.mine_similarity(torch.zeros(3, 4))
    with pytest.raises(ValueError, match="labels"):
        miner.mine_similarity(torch.zeros(3, 3), torch.arange(4))
    with pytest.raises(ValueError, match="NaN"):
        miner.mine_similarity(torch.full((3, 3), float("nan")))
    with pytest.raises(ValueError, match="labels are on meta"):
        miner.mine_similarity(torch.zeros(3, 3), torch.arange(3, device="meta"))
    x = ball_points(5, 4, seed=0)
    with pytest.raises(ValueError, match="ref_emb"):
        miner(x, torch.arange(5), x.clone(), torch.arange(5))
    with pytest.raises(ValueError, match="inside the Poincaré ball"):
        miner(x * 10, torch.arange(5))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_rules_and_seed():
    x, labels = ball_points(40, 6, seed=1).cuda(), (torch.arange(40) % 8).cuda()
    out1 = ReciprocalTripletMiner(topk=7, generator=3)(x, labels)
    out2 = ReciprocalTripletMiner(topk=7, generator=3)(x, labels)
    assert all(u.is_cuda and torch.equal(u, v) for u, v in zip(out1, out2))
    pos, neg = reference_sets(x.cpu(), labels.cpu(), 7)
    for i, j, k in zip(*(t.tolist() for t in out1)):
        assert j in pos[i] and k in neg[i]
    with pytest.raises(ValueError, match="generator"):
        ReciprocalTripletMiner(topk=7, generator=torch.Generator())(x, labels)
