"""PNG plots: metrics per epoch, and 2-D maps of test embeddings with the proxies (in the Poincaré disk for ball
embeddings). Uses matplotlib's object-oriented API (no pyplot, no global backend change)."""

import math

import numpy as np
import torch
from matplotlib import colormaps
from matplotlib.figure import Figure
from scipy.stats import spearmanr

from pml_hyperbolic import poincare

PROXY_STYLE = {
    "hierarchical proxies": dict(marker="x", s=14, c="black", lw=0.8),
    "class proxies": dict(marker="^", s=18, c="black"),
    "ball origin": dict(marker="P", s=70, c="red", edgecolors="white"),
}


def _spaces(row):
    return [k for k, v in row.items() if isinstance(v, dict) and k != "val"]


LINE_STYLES = ("-", "--", ":", "-.")


def plot_history(epochs, path, title="", reported=None):
    """Recall@K (left) and MAP@R (right) of the test classes per epoch. Colour: the metric (the same K has the same
    colour in every space); line style: the evaluation space (solid: the first, which the run reports); grey dotted
    line: the reported epoch (``reported``, a :meth:`~.history.History.result` row)."""
    rows = [r for r in epochs if _spaces(r)]
    if not rows:
        return None
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_r, ax_m = fig.subplots(1, 2)
    x = [r["epoch"] for r in rows]
    recall = [m for m in rows[0][_spaces(rows[0])[0]] if m.startswith("recall_at_")]
    for i, space in enumerate(_spaces(rows[0])):
        style = LINE_STYLES[i % len(LINE_STYLES)]
        for j, metric in enumerate(recall):
            y = [100 * r[space][metric] for r in rows]
            ax_r.plot(x, y, style, color=f"C{j}", marker="o", ms=3, label=f"R@{metric[10:]}, {space} space")
        y = [100 * r[space]["mean_average_precision_at_r"] for r in rows]
        ax_m.plot(x, y, style, color="C0", marker="o", ms=3, label=f"MAP@R, {space} space")
    _style_axes(ax_r, "Recall@K on the test classes (%)", ax_m)
    for ax in (ax_r, ax_m):
        if reported is not None:
            ax.axvline(reported["epoch"], color="0.5", ls=":", label=f"reported epoch ({reported['selected_by']})")
        ax.legend(fontsize=7)
    fig.suptitle(f"{title}: retrieval on test classes unseen in training, per epoch" if title else "")
    fig.savefig(path, dpi=120)
    return fig


def plot_comparison(histories, path):
    """Recall@1 and MAP@R on the test classes per epoch for several runs ``{name: history rows}`` (each run's first
    evaluation space); one colour per run, the same in both panels."""
    fig = Figure(figsize=(11, 4.2), layout="constrained")
    ax_r, ax_m = fig.subplots(1, 2)
    for i, (name, epochs) in enumerate(histories.items()):
        rows = [r for r in epochs if _spaces(r)]
        if not rows:
            continue
        space = _spaces(rows[0])[0]
        x = [r["epoch"] for r in rows]
        label = f"{name} ({space} space)"
        style = dict(color=f"C{i % 10}", marker="o", ms=3, label=label)
        ax_r.plot(x, [100 * r[space]["recall_at_1"] for r in rows], **style)
        ax_m.plot(x, [100 * r[space]["mean_average_precision_at_r"] for r in rows], **style)
    _style_axes(ax_r, "Recall@1 on the test classes (%)", ax_m)
    for ax in (ax_r, ax_m):
        ax.legend(fontsize=7)
    fig.suptitle("Retrieval on test classes unseen in training, per epoch")
    fig.savefig(path, dpi=120)
    return fig


def embedding_map(embeddings, labels, c=None, proxies=None, max_classes=20, max_points=2000, max_pairs_points=300):
    """A 2-D map of (N, D) embeddings of the first ``max_classes`` classes, and of ``proxies`` ``{name: (M, D)}``.

    Ball points (curvature ``c``) go to the Poincaré disk. First a Möbius translation (an isometry of the ball) moves
    the embeddings' tangent mean to the origin; then, in the tangent space there, each point keeps its norm (its
    distance to the centre is exact) and takes its direction from the top two principal axes of the embeddings, and
    ``expmap0`` maps it into the 2-D disk of the same curvature, drawn as the unit disk. ``"ball origin"`` is where the
    ball's own origin lands (closer to it = higher in a hierarchy). Other embeddings are projected on their top two
    principal axes. ``rho`` is the Spearman correlation between pairwise distances before and after (on up to
    ``max_pairs_points`` points; None for fewer than 3). Deterministic.
    """
    x, labels = embeddings.detach().double().cpu(), torch.as_tensor(labels).cpu()
    if x.shape[1] < 2:
        raise ValueError("embedding_map needs embeddings with at least 2 dimensions.")
    keep = torch.isin(labels, torch.unique(labels)[:max_classes])
    x, labels = x[keep], labels[keep]
    x, labels = x[:: math.ceil(len(x) / max_points)], labels[:: math.ceil(len(x) / max_points)]
    proxies = {k: v.detach().double().cpu() for k, v in (proxies or {}).items()}
    sample = x[:: math.ceil(len(x) / max_pairs_points)]
    if c is not None:
        centre = poincare.expmap0(poincare.logmap0(x, c).mean(0, keepdim=True), c)
        axes = _top_axes(poincare.logmap0(mobius_add(-centre, x, c), c))

        def to_2d(points):
            t = poincare.logmap0(mobius_add(-centre, points, c), c)
            v = t @ axes
            v = v * (t.norm(dim=1, keepdim=True) / v.norm(dim=1, keepdim=True).clamp_min(1e-300))
            return poincare.expmap0(v, c)

        d_in, d_out = poincare.cdist(sample, sample, c), poincare.cdist(to_2d(sample), to_2d(sample), c)
        proxies["ball origin"] = torch.zeros(1, x.shape[1], dtype=x.dtype)
        xy, out_proxies = to_2d(x) * math.sqrt(c), {k: (to_2d(v) * math.sqrt(c)).numpy() for k, v in proxies.items()}
    else:
        mean = x.mean(0, keepdim=True)
        axes = _top_axes(x - mean)
        d_in, d_out = torch.cdist(sample, sample), torch.cdist((sample - mean) @ axes, (sample - mean) @ axes)
        xy, out_proxies = (x - mean) @ axes, {k: ((v - mean) @ axes).numpy() for k, v in proxies.items()}
    iu = torch.triu_indices(len(d_in), len(d_in), 1)
    rho = float(spearmanr(d_in[iu[0], iu[1]].numpy(), d_out[iu[0], iu[1]].numpy()).statistic) if len(d_in) > 2 else None
    kind = "poincare" if c is not None else "pca"
    return {"kind": kind, "points": xy.numpy(), "labels": labels.numpy(), "proxies": out_proxies, "rho": rho}


def mobius_add(x, y, c):
    r"""Möbius addition :math:`x \oplus_c y` (broadcast over rows); :math:`y \mapsto (-m) \oplus_c y` is an isometry
    of the ball that moves m to the origin."""
    xy = (x * y).sum(-1, keepdim=True)
    x2, y2 = x.pow(2).sum(-1, keepdim=True), y.pow(2).sum(-1, keepdim=True)
    num = (1 + 2 * c * xy + c * y2) * x + (1 - c * x2) * y
    return num / (1 + 2 * c * xy + c**2 * x2 * y2)


def _top_axes(x):
    """(D, 2) top two eigenvectors of xᵀx, largest first."""
    if x.shape[1] == 2:
        return torch.eye(2, dtype=x.dtype)
    _, vecs = torch.linalg.eigh(x.T @ x)
    return vecs[:, [-1, -2]]


def draw_map(ax, m, title=""):
    """Draw an :func:`embedding_map` result on ``ax``: one colour per test class (the first 20 classes), proxies in
    black; the subtitle says how the map was made and how faithful it is (Spearman correlation between pairwise
    distances in the embedding space and on the map)."""
    if m["kind"] == "poincare":
        theta = np.linspace(0, 2 * np.pi, 400)
        ax.plot(np.cos(theta), np.sin(theta), color="0.3", lw=1)
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.05, 1.05)
    classes = np.unique(m["labels"])
    colors = {
        label: f"C{i % 10}" if len(classes) <= 10 else colormaps["tab20"](i % 20) for i, label in enumerate(classes)
    }
    for label in classes:
        points = m["points"][m["labels"] == label]
        ax.scatter(
            points[:, 0],
            points[:, 1],
            s=5,
            color=colors[label],
            alpha=0.7,
            lw=0,
            label=f"test class {label}" if len(classes) <= 10 else None,
        )
    for name, points in m["proxies"].items():
        ax.scatter(points[:, 0], points[:, 1], label=name, **PROXY_STYLE.get(name, dict(marker="+", s=14, c="black")))
    if len(classes) > 10:  # one legend entry for all the class colours
        ax.scatter([], [], s=5, color="0.5", label=f"test images ({len(classes)} classes, one colour each)")
    ax.legend(fontsize=6, loc="lower right", markerscale=2)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    if m["kind"] == "poincare":
        kind = "Poincaré disk, moved so the embeddings' mean is at the centre"
    else:
        kind = "top two principal axes"
    rho = "" if m["rho"] is None else f"\ndistances kept in rank order: Spearman ρ = {m['rho']:.2f}"
    ax.set_title(f"{title}\n{kind}{rho}", fontsize=8)


def save_map(m, path, title=""):
    fig = Figure(figsize=(6, 6), layout="constrained")
    draw_map(fig.subplots(), m, title)
    fig.savefig(path, dpi=120)
    return fig


def save_map_grid(maps, path, columns=3):
    """Several maps ``{title: map}`` side by side."""
    rows = math.ceil(len(maps) / columns)
    fig = Figure(figsize=(4 * columns, 4.2 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns)).ravel()
    for ax, (name, m) in zip(axes, maps.items()):
        draw_map(ax, m, name)
    for ax in axes[len(maps) :]:
        ax.set_visible(False)
    fig.savefig(path, dpi=110)
    return fig


def _style_axes(ax_r, recall_label, ax_m):
    """Epoch x-axis, labels and grid of the recall and MAP@R panels."""
    for ax, name in ((ax_r, recall_label), (ax_m, "MAP@R on the test classes (%)")):
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
