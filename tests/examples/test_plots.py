import math

import pytest
import torch
from pml_hyperbolic_examples import plots

from pml_hyperbolic import poincare

C = 0.3


def reference_dist(x, y, c):
    """Textbook arccosh form of the Poincaré distance, float64."""
    sq = ((x - y) ** 2).sum(-1)
    den = (1 - c * (x**2).sum(-1)) * (1 - c * (y**2).sum(-1))
    return torch.acosh(1 + 2 * c * sq / den) / math.sqrt(c)


def ball_points(n, dim, seed, scale=0.6):
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(n, dim, generator=g, dtype=torch.float64) * scale + 0.8
    return poincare.expmap0(u, C)


def test_mobius_translation_is_an_isometry():
    x, m = ball_points(20, 5, 0), ball_points(1, 5, 1)
    y = plots.mobius_add(-m, x, C)
    i, j = torch.triu_indices(20, 20, 1)
    torch.testing.assert_close(reference_dist(y[i], y[j], C), reference_dist(x[i], x[j], C))
    torch.testing.assert_close(plots.mobius_add(-m, m, C), torch.zeros_like(m))


def test_two_dimensional_ball_embeddings_are_mapped_isometrically():
    x = ball_points(50, 2, 2)
    labels = torch.arange(50) % 3
    m = plots.embedding_map(x, labels, c=C, proxies={"hierarchical proxies": ball_points(7, 2, 3)})
    z = torch.from_numpy(m["points"]) / math.sqrt(C)  # unit disk -> ball of curvature C
    i, j = torch.triu_indices(50, 50, 1)
    torch.testing.assert_close(reference_dist(z[i], z[j], C), reference_dist(x[i], x[j], C))
    assert m["rho"] == pytest.approx(1.0)
    assert m["proxies"]["hierarchical proxies"].shape == (7, 2) and m["proxies"]["ball origin"].shape == (1, 2)


def test_distances_to_the_centre_are_exact_in_high_dimension():
    x = ball_points(80, 16, 4)
    m = plots.embedding_map(x, torch.zeros(80, dtype=torch.long), c=C)
    # reference centre: tangent mean at the origin, with logmap0/expmap0 written out
    norm = x.norm(dim=1, keepdim=True)
    v = (torch.atanh(math.sqrt(C) * norm) * x / (math.sqrt(C) * norm)).mean(0)
    centre = torch.tanh(math.sqrt(C) * v.norm()) * v / (math.sqrt(C) * v.norm())
    radius = torch.from_numpy(m["points"]).norm(dim=1)  # unit disk: distance to the centre is 2 artanh(r) / sqrt(c)
    torch.testing.assert_close(2 * torch.atanh(radius) / math.sqrt(C), reference_dist(centre[None], x, C))
    assert radius.max() < 1
    origin = torch.from_numpy(m["proxies"]["ball origin"]).norm()
    torch.testing.assert_close(
        2 * torch.atanh(origin) / math.sqrt(C), reference_dist(centre, torch.zeros(16, dtype=x.dtype), C)
    )


def test_euclidean_maps_are_pca():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(40, 2, generator=g)
    m = plots.embedding_map(x, torch.arange(40) % 2)
    xy = torch.from_numpy(m["points"])
    torch.testing.assert_close(torch.cdist(xy, xy), torch.cdist(x.double(), x.double()))
    assert m["kind"] == "pca" and m["rho"] == pytest.approx(1.0)


def test_class_and_point_limits():
    x = ball_points(300, 4, 6)
    labels = torch.arange(300) % 30
    m = plots.embedding_map(x, labels, c=C, max_classes=5, max_points=40)
    assert set(m["labels"].tolist()) == {0, 1, 2, 3, 4} and len(m["labels"]) <= 40


def test_pngs_are_written(tmp_path):
    m = plots.embedding_map(
        ball_points(30, 3, 7), torch.arange(30) % 3, c=C, proxies={"class proxies": ball_points(3, 3, 8)}
    )
    plots.save_map(m, tmp_path / "map.png", "title")
    plots.save_map_grid({"a": m, "b": m}, tmp_path / "grid.png")
    rows = [
        {"epoch": e, "loss": 1.0, "time_s": 1.0, "poincare": {"recall_at_1": 0.5, "mean_average_precision_at_r": 0.2}}
        for e in (1, 2)
    ]
    plots.plot_history(rows, tmp_path / "history.png")
    plots.plot_comparison({"x": rows}, tmp_path / "comparison.png")
    for name in ("map.png", "grid.png", "history.png", "comparison.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
