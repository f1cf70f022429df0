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


def legend_labels(ax):
    legend = ax.get_legend()
    assert legend is not None
    return [t.get_text() for t in legend.get_texts()]


def history_rows(spaces=("hyperbolic", "euclidean")):
    metrics = {"recall_at_1": 0.5, "recall_at_2": 0.6, "mean_average_precision_at_r": 0.2}
    return [{"epoch": e, "loss": 1.0, "time_s": 1.0, **{s: dict(metrics) for s in spaces}} for e in (1, 2, 3)]


def test_history_plot_explains_its_curves(tmp_path):
    reported = {"selected_by": "last epoch", **history_rows()[-1]}
    fig = plots.plot_history(history_rows(), tmp_path / "recall.png", title="digits: chest", reported=reported)
    ax_r, ax_m = fig.axes
    labels = legend_labels(ax_r)
    assert labels == [
        "R@1, hyperbolic space",
        "R@2, hyperbolic space",
        "R@1, euclidean space",
        "R@2, euclidean space",
        "reported epoch (last epoch)",
    ]
    assert legend_labels(ax_m) == ["MAP@R, hyperbolic space", "MAP@R, euclidean space", "reported epoch (last epoch)"]
    lines = {line.get_label(): line for line in ax_r.get_lines()}
    for k in (1, 2):  # the same K has the same colour in both spaces, the spaces differ by line style
        hyp, euc = lines[f"R@{k}, hyperbolic space"], lines[f"R@{k}, euclidean space"]
        assert hyp.get_color() == euc.get_color() and hyp.get_linestyle() != euc.get_linestyle()
    assert lines["R@1, hyperbolic space"].get_color() != lines["R@2, hyperbolic space"].get_color()
    for ax in (ax_r, ax_m):
        assert ax.get_xlabel() == "epoch" and "test classes" in ax.get_ylabel()
    assert (tmp_path / "recall.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_plot_has_a_legend_on_each_panel(tmp_path):
    fig = plots.plot_comparison({"a": history_rows(("cosine",)), "b": history_rows(("poincare",))}, tmp_path / "c.png")
    for ax in fig.axes:
        assert legend_labels(ax) == ["a (cosine space)", "b (poincare space)"]
    colours = [[line.get_color() for line in ax.get_lines()] for ax in fig.axes]
    assert colours[0] == colours[1] and colours[0][0] != colours[0][1]


def test_maps_explain_their_points_and_projection(tmp_path):
    many = plots.embedding_map(ball_points(60, 3, 7), torch.arange(60) % 15, c=C,
                               proxies={"hierarchical proxies": ball_points(5, 3, 8)})  # fmt: skip
    fig = plots.save_map(many, tmp_path / "map.png", "title")
    (ax,) = fig.axes
    labels = legend_labels(ax)
    assert labels == ["hierarchical proxies", "ball origin", "test images (15 classes, one colour each)"]
    assert "Poincaré disk, moved so the embeddings' mean is at the centre" in ax.get_title()
    assert "Spearman ρ" in ax.get_title()
    few = plots.embedding_map(torch.randn(30, 4), torch.arange(30) % 3)
    fig = plots.save_map_grid({"a": few, "b": many}, tmp_path / "grid.png")
    assert legend_labels(fig.axes[0]) == ["test class 0", "test class 1", "test class 2"]
    assert "top two principal axes" in fig.axes[0].get_title()
