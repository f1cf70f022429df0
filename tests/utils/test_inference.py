"""PoincareKNN and TangentKMeans against plain float64 brute force written here."""

import math

import faiss
import pytest
import torch
from pytorch_metric_learning import testers
from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
from pytorch_metric_learning.utils.inference import FaissKMeans, InferenceModel
from sklearn.metrics import normalized_mutual_info_score

import pml_hyperbolic.utils.inference as inference
from pml_hyperbolic.layers import ToPoincare
from pml_hyperbolic.utils.inference import PoincareKNN, TangentKMeans

CPU = torch.device("cpu")


def brute_force_dist(x, y, c):
    """Poincaré distances (float64) from exact coordinate differences: 2/sqrt(c) asinh(sqrt(c A / (alpha beta)))."""
    x, y = x.double(), y.double()
    alpha = 1 - c * (x * x).sum(1)
    beta = 1 - c * (y * y).sum(1)
    out = torch.empty(len(x), len(y), dtype=torch.float64)
    for s in range(0, len(x), 16):
        diff = x[s : s + 16, None, :] - y[None, :, :]
        a = (diff * diff).sum(2)
        out[s : s + 16] = 2 / math.sqrt(c) * torch.asinh(torch.sqrt(c * a / (alpha[s : s + 16, None] * beta[None])))
    return out


def ball_points(n, dim, c, seed, boundary_frac=0.1):
    """Points spread over the ball; a fraction sits at 0.999 of the radius."""
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(n, dim, generator=g), dim=1)
    radius = torch.rand(n, 1, generator=g) ** (1 / dim)
    radius[: int(boundary_frac * n)] = 0.999
    return direction * radius * (0.9999 / math.sqrt(c))


def check_against_brute_force(d, i, true, k, exclude_self=False):
    """Returned distances are the k smallest (float64), and the returned indices have exactly those distances."""
    if exclude_self:
        true = true.clone().fill_diagonal_(float("inf"))
    best = true.sort(1).values[:, :k]
    assert d.dtype == torch.float32 and d.shape == i.shape == best.shape
    assert all(len(set(row.tolist())) == k for row in i), "a neighbour is returned twice"
    if exclude_self:
        assert not (i == torch.arange(len(i))[:, None]).any(), "the self-match was not removed"
    torch.testing.assert_close(d.double(), best, rtol=5e-5, atol=1e-6)
    # the i-th neighbour is the i-th nearest, ties aside: keys equal in float32 (1e-7 apart) keep the index's order
    torch.testing.assert_close(true.gather(1, i), best, rtol=1e-7, atol=0)


@pytest.mark.parametrize("dim", [2, 3, 16, 128, 256])
@pytest.mark.parametrize("c", [0.1, 1.0])
def test_matches_brute_force_query_not_reference(dim, c):
    ref = ball_points(600, dim, c, seed=dim)
    ref[500:540] = ref[:40]  # duplicates: ties at distance 0
    g = torch.Generator().manual_seed(1)
    query = torch.cat([ref[:50] + 1e-4 / math.sqrt(c) * torch.randn(50, dim, generator=g), ball_points(50, dim, c, 7)])
    query = query * (0.999 / math.sqrt(c) / query.norm(dim=1, keepdim=True)).clamp(max=1)
    true = brute_force_dist(query, ref, c)
    for k in [1, 10, 200, 600]:
        d, i = PoincareKNN(c)(query, k, ref)
        check_against_brute_force(d, i, true, k)


def mobius_add(x, y, c):
    """x (+)_c y, an isometry of the ball in y: d(x, x (+) z) = d(0, z)."""
    xy, x2, y2 = (x * y).sum(-1, keepdim=True), (x * x).sum(-1, keepdim=True), (y * y).sum(-1, keepdim=True)
    return ((1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y) / (1 + 2 * c * xy + c * c * x2 * y2)


def near_tie_shell(dim, c, n=400, seed=0):
    """References on a hyperbolic sphere around a centre, at distances that differ by ~1e-6 relative: below the
    resolution of float32 scores."""
    g = torch.Generator().manual_seed(seed)
    centre = 0.5 / math.sqrt(c) * torch.nn.functional.normalize(torch.randn(1, dim, generator=g, dtype=torch.float64))
    direction = torch.nn.functional.normalize(torch.randn(n, dim, generator=g, dtype=torch.float64), dim=1)
    radius = 0.15 / math.sqrt(c) * (1 + 1e-6 * torch.randn(n, 1, generator=g, dtype=torch.float64))
    return centre.float(), mobius_add(centre, radius * direction, c).float()


def test_near_ties_below_float32_resolution_are_ordered_exactly():
    c, dim, k = 0.1, 128, 50
    centre, ref = near_tie_shell(dim, c)
    true = brute_force_dist(centre, ref, c)
    # the data is hard: faiss's own float32 ranking of the same augmented vectors is off by more than 1e-7 (~1e-6)
    knn = PoincareKNN(c, reset_before=False, reset_after=False)
    knn.train(ref)
    _, raw = knn._searcher(False)(centre, k)
    best = true.sort(1).values[:, :k]
    assert ((true.gather(1, raw) - best).abs() / best).max() > 5e-7
    for extra in [0, 16]:  # extra_candidates=0 also exercises the completeness certificate
        d, i = PoincareKNN(c, extra_candidates=extra)(centre, k, ref)
        check_against_brute_force(d, i, true, k)


def test_tie_rtol_keeps_order_within_tolerance():
    c, dim, k, tol = 0.1, 128, 50, 1e-4
    centre, ref = near_tie_shell(dim, c)
    query = torch.cat([centre, ball_points(20, dim, c, 3)])
    true = brute_force_dist(query, ref, c)
    d, i = PoincareKNN(c, tie_rtol=tol)(query, k, ref)
    best = true.sort(1).values[:, :k]
    torch.testing.assert_close(true.gather(1, i), best, rtol=tol, atol=0)
    torch.testing.assert_close(d.double(), best, rtol=tol, atol=0)


def test_ref_includes_query_excludes_self():
    c, dim, k = 0.5, 32, 8
    x = ball_points(500, dim, c, seed=3)
    x[450:] = x[:50]  # duplicates: the nearest other point is at distance 0
    true = brute_force_dist(x, x, c)
    d, i = PoincareKNN(c)(x, k, x, ref_includes_query=True)
    check_against_brute_force(d, i, true, k, exclude_self=True)
    assert (d[:50, 0] == 0).all() and (d[450:, 0] == 0).all()


def test_many_duplicates_trigger_a_wider_search():
    c, dim = 0.1, 16
    x = ball_points(300, dim, c, seed=4)
    x[:60] = x[0]  # 60 copies: more ties than the first candidate list holds
    d, i = PoincareKNN(c, extra_candidates=2)(x[:1], 5, x)
    assert (d == 0).all() and (i < 60).all() and len(set(i[0].tolist())) == 5


def test_chunked_search_equals_single_chunk(monkeypatch):
    c, dim, k = 0.1, 24, 30
    ref, query = ball_points(700, dim, c, seed=5), ball_points(300, dim, c, seed=6)
    d1, i1 = PoincareKNN(c)(query, k, ref)
    monkeypatch.setattr(inference, "_CHUNK_ELEMENTS", 1000)
    monkeypatch.setattr(inference, "_MAX_CHUNK_ROWS", 7)
    monkeypatch.setattr(inference, "_EXACT_CHUNK", 5)
    d2, i2 = PoincareKNN(c)(query, k, ref)
    torch.testing.assert_close(d1, d2)
    assert torch.equal(i1, i2)
    check_against_brute_force(d2, i2, brute_force_dist(query, ref, c), k)


def test_float64_inputs():
    c, dim, k = 0.1, 8, 5
    ref, query = ball_points(200, dim, c, seed=8).double(), ball_points(20, dim, c, seed=9).double()
    d, i = PoincareKNN(c)(query, k, ref)
    check_against_brute_force(d, i, brute_force_dist(query, ref, c), k)


def labelled_ball_data(n_classes, per_class, dim, c, seed):
    g = torch.Generator().manual_seed(seed)
    centres = 0.6 / math.sqrt(c) * torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=g), dim=1)
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    x = centres[labels] + 0.6 / math.sqrt(c) * torch.randn(len(labels), dim, generator=g) / math.sqrt(dim)
    x = x * (0.99 / math.sqrt(c) / x.norm(dim=1, keepdim=True)).clamp(max=1)
    return x, labels


def brute_force_metrics(query, query_labels, ref, ref_labels, c, same_set):
    """precision_at_1 and MAP@R computed plainly, one query at a time."""
    dist = brute_force_dist(query, ref, c)
    p_at_1, map_at_r = [], []
    for q in range(len(query)):
        order = dist[q].argsort().tolist()
        if same_set:
            order.remove(q)
        relevant = [bool(ref_labels[j] == query_labels[q]) for j in order]
        r = sum(relevant)
        p_at_1.append(float(relevant[0]))
        hits, precisions = 0, []
        for rank, rel in enumerate(relevant[:r], start=1):
            if rel:
                hits += 1
                precisions.append(hits / rank)
        map_at_r.append(sum(precisions) / r)
    return sum(p_at_1) / len(p_at_1), sum(map_at_r) / len(map_at_r)


METRICS = ("precision_at_1", "mean_average_precision_at_r")


def test_accuracy_calculator_matches_brute_force():
    c = 0.1
    x, y = labelled_ball_data(12, 25, 16, c, seed=10)
    calc = AccuracyCalculator(include=METRICS, k="max_bin_count", device=CPU, knn_func=PoincareKNN(c))
    acc = calc.get_accuracy(x, y)
    p1, mapr = brute_force_metrics(x, y, x, y, c, same_set=True)
    assert 0.2 < p1 < 0.95  # a non-trivial task
    assert acc["precision_at_1"] == pytest.approx(p1, abs=1e-12)
    assert acc["mean_average_precision_at_r"] == pytest.approx(mapr, abs=1e-12)
    # separate query and reference sets
    q, qy, r, ry = x[::3], y[::3], x[torch.arange(len(x)) % 3 != 0], y[torch.arange(len(x)) % 3 != 0]
    acc = calc.get_accuracy(q, qy, r, ry)
    p1, mapr = brute_force_metrics(q, qy, r, ry, c, same_set=False)
    assert acc["precision_at_1"] == pytest.approx(p1, abs=1e-12)
    assert acc["mean_average_precision_at_r"] == pytest.approx(mapr, abs=1e-12)


def test_global_embedding_space_tester():
    c = 0.1
    g = torch.Generator().manual_seed(11)
    labels = torch.arange(6).repeat_interleave(20)
    features = torch.randn(6, 8, generator=g)[labels] + 0.8 * torch.randn(120, 8, generator=g)
    embedder = ToPoincare(c, clip_r=2.3)  # Euclidean features -> ball points, as a hyperbolic head does
    calc = AccuracyCalculator(
        include=METRICS + ("NMI",), k="max_bin_count", device=CPU, knn_func=PoincareKNN(c),
        kmeans_func=TangentKMeans(c, seed=0),
    )
    tester = testers.GlobalEmbeddingSpaceTester(
        normalize_embeddings=False, accuracy_calculator=calc, dataloader_num_workers=0, data_device=CPU
    )
    dataset = torch.utils.data.TensorDataset(features, labels)
    acc = tester.test({"val": dataset}, 0, torch.nn.Identity(), embedder)["val"]
    with torch.no_grad():
        x = embedder(features)
    p1, mapr = brute_force_metrics(x, labels, x, labels, c, same_set=True)
    assert 0.2 < p1 < 0.95
    assert acc["precision_at_1_level0"] == pytest.approx(p1, abs=1e-12)
    assert acc["mean_average_precision_at_r_level0"] == pytest.approx(mapr, abs=1e-12)
    assert 0 < acc["NMI_level0"] <= 1


def test_inference_model_train_add_save_load(tmp_path):
    c, dim, k = 0.1, 16, 7
    ref = ball_points(400, dim, c, seed=12)
    query = ball_points(30, dim, c, seed=13)
    im = InferenceModel(
        torch.nn.Identity(), knn_func=PoincareKNN(c, reset_before=False, reset_after=False),
        normalize_embeddings=False, data_device=CPU,
    )
    im.train_knn(ref[:250])
    im.add_to_knn(ref[250:])
    d, i = im.get_nearest_neighbors(query, k)
    true = brute_force_dist(query, ref, c)
    check_against_brute_force(d, i, true, k)
    path = str(tmp_path / "index.faiss")
    im.save_knn_func(path)
    im2 = InferenceModel(
        torch.nn.Identity(), knn_func=PoincareKNN(c, reset_before=False, reset_after=False),
        normalize_embeddings=False, data_device=CPU,
    )
    im2.load_knn_func(path)
    d2, i2 = im2.get_nearest_neighbors(query, k)
    assert torch.equal(i, i2)
    torch.testing.assert_close(d, d2)
    with pytest.raises(ValueError, match="c = 0.1"):
        PoincareKNN(0.2).load(path)


def ivf(nlist, nprobe, codes="Flat"):
    def make(dim):
        index = faiss.index_factory(dim, f"IVF{nlist},{codes}")
        index.nprobe = nprobe
        return index

    return make


def hnsw(dim):
    index = faiss.IndexHNSWFlat(dim, 16)
    index.hnsw.efSearch = 64
    return index


def test_approximate_index_with_all_candidates_is_exact():
    c, dim, k = 0.1, 32, 10
    ref, query = ball_points(1000, dim, c, seed=14), ball_points(50, dim, c, seed=15)
    d, i = PoincareKNN(c, index_init_fn=ivf(16, 16), extra_candidates=1000)(query, k, ref)
    check_against_brute_force(d, i, brute_force_dist(query, ref, c), k)


def recall(i, true, k):
    exact = true.argsort(1)[:, :k]
    return sum(len(set(a.tolist()) & set(b.tolist())) for a, b in zip(i, exact)) / exact.numel()


@pytest.mark.parametrize("data", ["clipped", "spread norms"])
def test_approximate_indexes_rerank_exactly(data):
    c, dim, k = 0.1, 32, 10
    if data == "clipped":  # embeddings as a clipped hyperbolic head gives them: most on one sphere
        g = torch.Generator().manual_seed(16)
        labels = torch.arange(40).repeat_interleave(50)
        features = 3 * torch.randn(40, dim, generator=g)[labels] + 1.5 * torch.randn(2000, dim, generator=g)
        x = ToPoincare(c, clip_r=2.3)(features / math.sqrt(dim))
    else:
        x, _ = labelled_ball_data(40, 50, dim, c, seed=16)
    ref, query = x[::2], x[1::2][:100]
    true = brute_force_dist(query, ref, c)
    for make, min_recall in [(ivf(16, 8), 0.9), (hnsw, 0.9), (ivf(16, 8, "PQ8x4"), 0.75)]:
        d, i = PoincareKNN(c, index_init_fn=make, extra_candidates=64)(query, k, ref)
        assert recall(i, true, k) >= min_recall
        assert (i >= 0).all()
        torch.testing.assert_close(d.double(), true.gather(1, i), rtol=5e-5, atol=1e-6)  # exact distances
        assert (d[:, 1:] >= d[:, :-1]).all()


def test_missing_results_are_minus_one_at_inf():
    c, dim, k = 0.1, 8, 60
    ref, query = ball_points(400, dim, c, seed=17), ball_points(20, dim, c, seed=18)
    d, i = PoincareKNN(c, index_init_fn=ivf(32, 1))(query, k, ref)
    missing = i < 0
    assert missing.any() and (~missing).any()
    assert torch.isinf(d[missing]).all()
    true = brute_force_dist(query, ref, c)
    torch.testing.assert_close(d[~missing].double(), true.gather(1, i.clamp_min(0))[~missing], rtol=5e-5, atol=1e-6)


@pytest.mark.skipif(
    not torch.cuda.is_available() or faiss.get_num_gpus() == 0, reason="needs CUDA and a faiss-gpu build"
)
def test_gpu_matches_cpu():
    c, dim, k = 0.1, 64, 20
    ref, query = ball_points(3000, dim, c, seed=19), ball_points(200, dim, c, seed=20)
    d_cpu, i_cpu = PoincareKNN(c)(query, k, ref)
    d_gpu, i_gpu = PoincareKNN(c)(query.cuda(), k, ref.cuda())
    assert d_gpu.is_cuda
    torch.testing.assert_close(d_gpu.cpu(), d_cpu)
    assert torch.equal(i_gpu.cpu(), i_cpu)


def test_errors():
    c = 0.1
    ref, query = ball_points(50, 4, c, seed=21), ball_points(5, 4, c, seed=22)
    for bad_c in [0, -1.0, float("nan"), float("inf")]:
        with pytest.raises(ValueError, match="curvature"):
            PoincareKNN(bad_c)
    with pytest.raises(ValueError, match="2-D tensor"):
        PoincareKNN(c)(query[0], 1, ref)
    with pytest.raises(ValueError, match="2-D tensor"):
        PoincareKNN(c)(query, 1, ref[None])
    with pytest.raises(ValueError, match="floating point"):
        PoincareKNN(c)(query.long(), 1, ref)
    with pytest.raises(ValueError, match="width"):
        PoincareKNN(c)(query[:, :3], 1, ref)
    with pytest.raises(ValueError, match="inside the Poincaré ball"):
        PoincareKNN(c)(query * 10, 1, ref)
    with pytest.raises(ValueError, match="inside the Poincaré ball"):
        PoincareKNN(c)(query, 1, ref * 10)
    with pytest.raises(ValueError, match="NaN"):
        PoincareKNN(c)(query, 1, torch.full_like(ref, float("nan")))
    with pytest.raises(ValueError, match=r"k = 51 neighbours requested, but it must be in \[1, 50\]"):
        PoincareKNN(c)(query, 51, ref)
    with pytest.raises(ValueError, match=r"k \(k \+ 1 with ref_includes_query\) = 51"):
        PoincareKNN(c)(ref, 50, ref, ref_includes_query=True)
    with pytest.raises(ValueError, match="must be in"):
        PoincareKNN(c)(query, 0, ref)
    with pytest.raises(ValueError, match="needs `reference`"):
        PoincareKNN(c)(query, 1)
    with pytest.raises(ValueError, match="L2 metric"):
        PoincareKNN(c, index_init_fn=faiss.IndexFlatIP)(query, 1, ref)
    with pytest.raises(ValueError, match="width dim = 4"):
        PoincareKNN(c, index_init_fn=lambda d: faiss.IndexFlatL2(d + 2))(query, 1, ref)
    with pytest.raises(ValueError, match="call train"):
        PoincareKNN(c).add(ref)
    with pytest.raises(ValueError, match="gpus"):
        PoincareKNN(c, gpus=0)
    with pytest.raises(ValueError, match="extra_candidates"):
        PoincareKNN(c, extra_candidates=-1)
    with pytest.raises(ValueError, match="tie_rtol"):
        PoincareKNN(c, tie_rtol=-1e-3)
    with pytest.raises(ValueError, match="inside the Poincaré ball"):
        TangentKMeans(c)(ref * 10, 2)
    with pytest.raises(ValueError, match="curvature"):
        TangentKMeans(0)


def test_tangent_kmeans_recovers_clusters():
    c = 1.0
    g = torch.Generator().manual_seed(23)
    # tight clusters in the tangent space at the origin; two sit next to the boundary (tanh(3) = 0.995), where the
    # ball's coordinates squash them radially and stretch them sideways, so Euclidean k-means splits them wrongly
    centres = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, 3.6]])
    labels = torch.arange(4).repeat_interleave(50)
    tangent = centres[labels] + 0.05 * torch.randn(200, 2, generator=g)
    x = ToPoincare(c, clip_r=None)(tangent)
    clusters = TangentKMeans(c, niter=20, seed=0)(x, 4)
    assert clusters.shape == (200,)
    assert normalized_mutual_info_score(labels.numpy(), clusters.numpy()) == pytest.approx(1.0)
    euclidean = FaissKMeans(niter=20, seed=0)(x, 4)
    assert normalized_mutual_info_score(labels.numpy(), euclidean.numpy()) < 0.9


def test_two_space_embeddings_are_refused_and_the_head_hands_out_the_right_knn():
    """[sphere | ball] embeddings fed whole to PoincareKNN raise (the silent wrong metric of a tester); the head's
    knn_func ranks the ball part exactly as PoincareKNN on that part, and CHESTLoss hands out the same."""
    from pml_hyperbolic.layers import EuclideanHyperbolicHead
    from pml_hyperbolic.losses import CHESTLoss

    torch.manual_seed(0)
    head = EuclideanHyperbolicHead(12, 6, 10, c=0.1)
    with torch.no_grad():
        emb = head(torch.randn(40, 12))
    with pytest.raises(ValueError, match=r"first 6 columns .* knn_func\(\)"):
        PoincareKNN(c=0.1)(emb, 5, emb, True)
    d_ball, i_ball = PoincareKNN(c=0.1)(emb[:, 6:], 5, emb[:, 6:], True)
    for knn in (head.knn_func("hyperbolic"), CHESTLoss(4, 16, euclidean_dim=6).knn_func("hyperbolic")):
        d, i = knn(emb, 5, emb, True)
        assert torch.equal(i, i_ball) and torch.allclose(d, d_ball)
    cosine = head.knn_func("euclidean")(emb, 5, emb, True)[1]
    sim = emb[:, :6] @ emb[:, :6].t()
    sim.fill_diagonal_(-2)
    assert torch.equal(cosine[:, 0], sim.argmax(1))


def test_l2_normalised_ball_embeddings_warn():
    """pml's testers L2-normalise by default: unit-norm 'ball points' get a warning naming normalize_embeddings."""
    x = torch.nn.functional.normalize(torch.randn(30, 8), dim=1)
    with pytest.warns(UserWarning, match="normalize_embeddings=False"):
        PoincareKNN(c=0.1)(x, 3, x, True)
